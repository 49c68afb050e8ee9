/* herd — task-record updates applied on a thread of their own (internal to libherd).
 *
 * The hub's loop thread routes messages; copying each one into the record store, parsing
 * its dates and culling old records would otherwise be a fifth of that thread's work per
 * task. The loop thread instead gathers each update as an operation holding references to
 * the message's frames (zmq_msg_copy: no bytes copied) and the fields it already decoded,
 * and hands the gathered operations to the writer thread now and then. Whoever reads the
 * store takes it with herd_records_writer_lock(), which applies every operation handed
 * over or gathered before the call, in order: a query sees every update made before it.
 *
 * Only the thread that created the writer may call the functions below.
 */
#pragma once

#include "records.h"

G_BEGIN_DECLS

typedef struct HerdRecordsWriter HerdRecordsWriter;

/* Starts the writer thread for db (which the writer does not own). */
HerdRecordsWriter *herd_records_writer_new(HerdRecords *db);

/* Applies what is left, stops and joins the thread. NULL is a no-op. */
void herd_records_writer_free(HerdRecordsWriter *w);

/* The same updates as the herd_records_* functions of the same name; msg and fields are
 * copied (frames by reference), so the caller may free or send them right away. */
void herd_records_writer_add_request(HerdRecordsWriter *w, const HerdFrames *msg, const char *queue,
                                     const char *engine_uuid, const HerdMsgFields *fields);
void herd_records_writer_set_engine(HerdRecordsWriter *w, const char *msg_id, const char *engine_uuid);
void herd_records_writer_add_reply(HerdRecordsWriter *w, const HerdFrames *msg, const HerdMsgFields *fields,
                                   gint64 now);
void herd_records_writer_add_iopub(HerdRecordsWriter *w, const HerdFrames *msg);

/* Called once per loop iteration: hands the gathered updates to the thread when there are
 * enough of them, or when the last hand-over is a while ago. */
void herd_records_writer_flush(HerdRecordsWriter *w);

/* The store with every update so far applied, held until herd_records_writer_unlock().
 * Updates made while it is held are applied at the next hand-over. Not recursive. */
HerdRecords *herd_records_writer_lock(HerdRecordsWriter *w);
void herd_records_writer_unlock(HerdRecordsWriter *w);

G_END_DECLS
