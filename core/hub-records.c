/* herd — the hub's task records: hooks from the relay and the record queries (spec §7, §8).
 * The store itself is records.c; until it is wired in, record queries answer an error. */
#define G_LOG_DOMAIN "herd"
#include "hub-queries.h"

#include <string.h>

void herd_hub_records_init(HerdController *ctl) { (void)ctl; }
void herd_hub_records_free(HerdController *ctl) { (void)ctl; }
void herd_hub_records_request(HerdController *ctl, Job *job) { (void)ctl; (void)job; }
void herd_hub_records_engine(HerdController *ctl, Job *job, Engine *e) { (void)ctl; (void)job; (void)e; }
void herd_hub_records_reply(HerdController *ctl, Job *job, const HerdFrames *reply)
{
    (void)ctl; (void)job; (void)reply;
}
void herd_hub_records_iopub(HerdController *ctl, const HerdFrames *msg) { (void)ctl; (void)msg; }

static void not_stored(HerdController *ctl, const HerdFrames *req, const char *reply_type)
{
    herd_hub_reply_error(ctl, req, reply_type, "KeyError", "\"this herdd keeps no task records yet\"");
}

void herd_hub_on_result_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    not_stored(ctl, req, "result_reply");
}
void herd_hub_on_history_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    not_stored(ctl, req, "history_reply");
}
void herd_hub_on_db_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    not_stored(ctl, req, "db_reply");
}
void herd_hub_on_purge_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    not_stored(ctl, req, "purge_reply");
}
void herd_hub_on_resubmit_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    not_stored(ctl, req, "resubmit_reply");
}
void herd_hub_on_become_dask_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    herd_hub_reply_error(ctl, req, "become_dask_reply", "NotImplementedError",
                         "herdd does not run a dask scheduler");
}
void herd_hub_on_stop_distributed_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", "ok");
    json_node_take_object(n, o);
    herd_hub_reply(ctl, req, "stop_distributed_reply", n, NULL);
    json_node_unref(n);
}
