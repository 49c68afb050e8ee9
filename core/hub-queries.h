/* herd — the hub's task-record hooks and record queries (hub-records.c). Not installed. */
#pragma once

#include "controller-private.h"

/* buffers: frames appended after the content (zero-copy references), may be NULL. */
void herd_hub_reply(HerdController *ctl, const HerdFrames *req, const char *msg_type, JsonNode *content,
                    const HerdFrames *buffers);
void herd_hub_reply_error(HerdController *ctl, const HerdFrames *req, const char *msg_type, const char *ename,
                          const char *evalue);

void herd_hub_records_init(HerdController *ctl);
void herd_hub_records_free(HerdController *ctl);
void herd_hub_records_request(HerdController *ctl, Job *job);
void herd_hub_records_engine(HerdController *ctl, Job *job, Engine *e);
void herd_hub_records_reply(HerdController *ctl, Job *job, const HerdFrames *reply,
                            const struct HerdMsgFields *fields);
void herd_hub_records_iopub(HerdController *ctl, const HerdFrames *msg);

void herd_hub_on_result_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_history_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_db_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_purge_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_resubmit_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_become_dask_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
void herd_hub_on_stop_distributed_request(HerdController *ctl, const HerdFrames *req, JsonObject *content);
