/* herd — the hub's task records: hooks from the relay and the record queries (spec §7, §8).
 * Storage and query evaluation live in records.c; this file connects them to the hub's
 * bookkeeping (pending jobs, registered engines) and to the registration socket. */
#define G_LOG_DOMAIN "herd"
#include "hub-queries.h"
#include "records.h"

#include <string.h>

static HerdRecords *store(HerdController *ctl)
{
    return ctl->records;
}

void herd_hub_records_init(HerdController *ctl)
{
    ctl->records = herd_records_new_from_config(ctl->cfg);
}

void herd_hub_records_free(HerdController *ctl)
{
    if (ctl->records)
        herd_records_free(ctl->records);
    ctl->records = NULL;
}

void herd_hub_records_request(HerdController *ctl, Job *job)
{
    const char *queue = job->ch->kind == CH_MUX ? "mux" : job->ch->kind == CH_TASK ? "task" : NULL;
    if (!queue)
        return; /* broadcast requests get no record, as in ipyparallel; their output does */
    /* only requests that are answered: anything else would stay pending, never culled */
    if (strcmp(job->msg_type, "execute_request") != 0 && strcmp(job->msg_type, "apply_request") != 0)
        return;
    if (job->ch->kind == CH_MUX && !herd_hub_engine(ctl, job->target_uuid)) {
        g_info("mux: %s is for %s, which is not a registered engine: not recorded", job->msg_id, job->target_uuid);
        return;
    }
    HerdMsgFields fields = {
        .msg_id = job->msg_id,
        .msg_type = job->msg_type,
        .session = job->session,
        .date = job->date,
    };
    herd_records_add_request(store(ctl), &job->req, queue, job->target_uuid, &fields);
}

void herd_hub_records_engine(HerdController *ctl, Job *job, Engine *e)
{
    herd_records_set_engine(store(ctl), job->msg_id, e->uuid);
}

void herd_hub_records_reply(HerdController *ctl, Job *job, const HerdFrames *reply, const HerdMsgFields *fields)
{
    if (job->ch->kind == CH_BROADCAST)
        return;
    herd_records_add_reply(store(ctl), reply, fields, g_get_real_time());
}

void herd_hub_records_iopub(HerdController *ctl, const HerdFrames *msg)
{
    herd_records_add_iopub(store(ctl), msg, NULL);
}

/* ---------------------------------------------------------------- the hub's view */

static gboolean view_is_pending(const char *msg_id, gpointer data)
{
    return herd_router_is_pending(data, msg_id);
}

static const char *view_engine_uuid(gint64 engine_id, gpointer data)
{
    HerdController *ctl = data;
    if (engine_id < 0 || engine_id > G_MAXINT)
        return NULL;
    Engine *e = g_hash_table_lookup(ctl->engines_by_id, GINT_TO_POINTER((int)engine_id));
    return e ? e->uuid : NULL;
}

static HerdRecordsHubView hub_view(HerdController *ctl)
{
    return (HerdRecordsHubView){ .is_pending = view_is_pending, .engine_uuid = view_engine_uuid, .user_data = ctl };
}

/* ---------------------------------------------------------------- queries */

static void reply_and_free(HerdController *ctl, const HerdFrames *req, const char *msg_type, JsonNode *content,
                           HerdFrames *buffers)
{
    herd_hub_reply(ctl, req, msg_type, content, buffers);
    json_node_unref(content);
    if (buffers)
        herd_frames_clear(buffers);
}

void herd_hub_on_result_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    HerdRecordsHubView view = hub_view(ctl);
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_result_reply(store(ctl), content, &view, &bufs);
    reply_and_free(ctl, req, "result_reply", reply, &bufs);
}

void herd_hub_on_history_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    (void)content;
    reply_and_free(ctl, req, "history_reply", herd_records_history_reply(store(ctl)), NULL);
}

void herd_hub_on_db_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    HerdFrames bufs;
    herd_frames_init(&bufs);
    JsonNode *reply = herd_records_db_reply(store(ctl), content, &bufs);
    reply_and_free(ctl, req, "db_reply", reply, &bufs);
}

void herd_hub_on_purge_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    HerdRecordsHubView view = hub_view(ctl);
    reply_and_free(ctl, req, "purge_reply", herd_records_purge(store(ctl), content, &view), NULL);
}

/* A new load-balanced request from a stored one (spec §7.6): the stored header with a fresh
 * msg_id and date, parent = that header, metadata {} (7.1 drops dependencies), the stored
 * content and buffers; signed by the hub. */
static char *resubmit_one(HerdController *ctl, HerdResubmitSource *src)
{
    JsonObject *ho = json_node_get_object(src->header);
    g_autofree char *new_id = herd_session_msg_id(ctl->session);
    char date[HERD_ISO_LEN];
    herd_iso_now(date);
    json_object_set_string_member(ho, "msg_id", new_id);
    json_object_set_string_member(ho, "date", date);
    gsize hlen;
    char *header = herd_json_to_string(src->header, &hlen);

    HerdFrames msg;
    herd_frames_init(&msg);
    herd_frames_push(&msg, "", 0); /* internal client: its replies go nowhere */
    herd_frames_push(&msg, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(&msg, "", 0);
    herd_frames_push(&msg, header, hlen);
    herd_frames_push(&msg, header, hlen);
    herd_frames_push(&msg, "{}", 2);
    for (guint i = 0; i < src->parts.n; i++)
        herd_frames_push_frame_copy(&msg, &src->parts, i);
    g_free(header);
    herd_frames_find_delim(&msg);
    herd_session_resign(ctl->session, &msg);
    herd_router_submit_internal(ctl, &msg);
    herd_records_set_resubmitted(store(ctl), src->msg_id, new_id);
    return g_steal_pointer(&new_id);
}

void herd_hub_on_resubmit_request(HerdController *ctl, const HerdFrames *req, JsonObject *content)
{
    GPtrArray *sources = NULL;
    JsonNode *error = herd_records_resubmit_lookup(store(ctl), content, &sources);
    if (error) {
        reply_and_free(ctl, req, "resubmit_reply", error, NULL);
        return;
    }
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    JsonObject *o = json_object_new(), *map = json_object_new();
    json_object_set_string_member(o, "status", "ok");
    for (guint i = 0; i < sources->len; i++) {
        HerdResubmitSource *src = sources->pdata[i];
        g_autofree char *new_id = resubmit_one(ctl, src);
        json_object_set_string_member(map, src->msg_id, new_id);
    }
    json_object_set_object_member(o, "resubmitted", map);
    json_node_take_object(n, o);
    g_ptr_array_unref(sources);
    reply_and_free(ctl, req, "resubmit_reply", n, NULL);
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
    reply_and_free(ctl, req, "stop_distributed_reply", n, NULL);
}
