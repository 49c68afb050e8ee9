/* herd — the hub's task-record store (internal to libherd; not installed).
 *
 * One record per request msg_id, with the 22 fields of ipyparallel's TaskRecord (spec §8.1),
 * and the hub queries that read them: result_request (§7.2), history_request (§7.3),
 * db_request (§7.4), purge_request (§7.5) and the lookup behind resubmit_request (§7.6).
 *
 * Cost model. The relay path calls add_request / set_engine / add_reply once per message:
 * these keep references to the received frames (no JSON is re-encoded, nothing is parsed
 * when the caller passes the fields it already decoded in HerdMsgFields) and do a hash
 * lookup, a few small copies and O(1) list moves. JSON frames are parsed only when a
 * query needs them. Culling is O(records culled).
 *
 * Memory is bounded: past record_limit records the oldest finished tenth (cull_fraction)
 * is dropped; past size_limit bytes of stored buffers the oldest finished records are
 * dropped until the total is under size_limit * (1 - cull_fraction). "Finished" means a
 * reply (or a stranded-request error) was recorded, or the record was created by IOPub
 * alone; a request still waiting for its reply is never dropped. "Oldest" is the order in
 * which records finished, which keeps culling O(1) per record.
 *
 * Behind a small vtable (HerdRecordsBackend): the in-memory store, and "none" (--nodb),
 * which keeps nothing and answers queries with ipyparallel's NoDB errors. Queries return
 * the reply *content* (a JSON object node: {"status": "ok", ...} or a wrapped exception
 * from herd_error_content) and append buffer frames to a HerdFrames; the hub signs and
 * sends. Not thread-safe: one hub thread owns the store.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "herd/config.h"
#include "herd/wire.h"

G_BEGIN_DECLS

typedef struct HerdRecords HerdRecords;

/* Value of a date that is unknown (null in queries and replies). */
#define HERD_RECORD_NO_DATE G_MININT64

/* The evalue of every query error in --nodb mode (ename "KeyError"), as 7.1 words it. */
#define HERD_RECORDS_NODB_EVALUE "NoDB backend doesn't store any data. "

typedef struct HerdRecordLimits {
    guint record_limit;   /* max number of records; 0 = no count limit. Default 1024 */
    guint64 size_limit;   /* max bytes of stored buffers; 0 = no size limit. Default 1 GiB */
    double cull_fraction; /* share of record_limit culled at once, and the size head-room; 0.1 */
} HerdRecordLimits;

#define HERD_RECORD_LIMITS_DEFAULT ((HerdRecordLimits){ 1024, G_GUINT64_CONSTANT(1) << 30, 0.1 })

/* Fields of a message the caller has already decoded. Passing them spares the store a JSON
 * parse on the relay path; pass NULL instead of the whole struct and the store parses the
 * frames itself. When the struct is given, it is authoritative: a NULL member means the
 * message does not carry that field.
 *   request: msg_id = header.msg_id, session = header.session, date = header.date
 *   reply:   msg_id = parent_header.msg_id, date = header.date,
 *            started = metadata.started, engine = metadata.engine
 *   iopub:   msg_id = parent_header.msg_id, msg_type = header.msg_type */
typedef struct HerdMsgFields {
    const char *msg_id;
    const char *msg_type;
    const char *session;
    const char *date;
    const char *started;
    const char *engine;
} HerdMsgFields;

/* What the store needs to know from the hub's own bookkeeping (spec §8.2). Every member
 * may be NULL. */
typedef struct HerdRecordsHubView {
    /* TRUE while msg_id waits for its final reply. When NULL the store decides from the
     * record (request seen, no completion date). */
    gboolean (*is_pending)(const char *msg_id, gpointer user_data);
    /* The uuid of the registered engine with this id, or NULL when there is none. When NULL
     * every engine id is unknown. */
    const char *(*engine_uuid)(gint64 engine_id, gpointer user_data);
    gpointer user_data;
} HerdRecordsHubView;

/* ---- life cycle ---- */

/* kind HERD_DB_DICT: the in-memory store; HERD_DB_NONE: keep nothing. limits NULL = the
 * defaults. */
HerdRecords *herd_records_new(HerdDbKind kind, const HerdRecordLimits *limits);
/* The same, from [controller] db / record_limit / size_limit / cull_fraction. */
HerdRecords *herd_records_new_from_config(const HerdConfig *config);
void herd_records_free(HerdRecords *db);
/* Frees a HerdResubmitSource (also the GPtrArray's free function). */
void herd_resubmit_source_free(gpointer source);
/* "memory" or "none". */
const char *herd_records_backend_name(const HerdRecords *db);

/* ---- updates (the relay path) ---- */

/* A request went to an engine or a scheduler. msg is the whole received message (routing
 * frames, delimiter, signature, 4 JSON frames, buffers); the store keeps references to the
 * frames from the header on. queue: "mux", "task" (or NULL); engine_uuid: the destination
 * or NULL when not known yet. client_uuid = header.session, submitted = header.date.
 * If IOPub created the record first, the request fields are merged into it (its output is
 * kept). If a request is already stored for msg_id (e.g. a resubmission recorded by the
 * hub, then seen again on its way to the scheduler) the stored request, submitted and
 * client_uuid stay; queue and engine are updated when given.
 * Returns FALSE (and stores nothing) when msg is not a wire message or has no msg_id. */
gboolean herd_records_add_request(HerdRecords *db, const HerdFrames *msg, const char *queue,
                                  const char *engine_uuid, const HerdMsgFields *fields);

/* The task scheduler sent msg_id to an engine (also on retries). No-op for unknown ids. */
void herd_records_set_engine(HerdRecords *db, const char *msg_id, const char *engine_uuid);

/* A reply (engine's, or synthesized by a scheduler) for parent msg_id: stores the reply
 * frames as result_header/metadata/content/buffers, started = metadata.started,
 * completed = reply header.date, received = now (unix µs), and engine_uuid =
 * metadata.engine when present. A later reply replaces an earlier one. Returns FALSE when
 * no record exists for the parent msg_id (never recorded, purged or culled). */
gboolean herd_records_add_reply(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields,
                                gint64 now);

/* A MUX request stranded on a dead engine (spec §9): result_content = error (a JSON object
 * node, not taken), result_header = {"engine": uuid, "date": now}, no result buffers,
 * completed = now, engine_uuid = uuid. Returns FALSE for an unknown msg_id. */
gboolean herd_records_add_result_error(HerdRecords *db, const char *msg_id, const char *engine_uuid,
                                       JsonNode *error_content, gint64 now);

/* IOPub output (spec §6.4): stream → stdout/stderr appended, execute_input → code,
 * execute_result / error → content; other types and parent-less messages are ignored.
 * Creates an empty ("orphan") record when none exists for the parent. Returns TRUE when a
 * record was updated or created. */
gboolean herd_records_add_iopub(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields);

/* The record old_msg_id was resubmitted as new_msg_id. */
void herd_records_set_resubmitted(HerdRecords *db, const char *old_msg_id, const char *new_msg_id);

/* ---- queries: each returns the reply content (caller unrefs) and appends the reply's
 * buffer frames (zero-copy references) to buffers ---- */

/* result_request content {"msg_ids": [...], "status_only": bool} (§7.2). */
JsonNode *herd_records_result_reply(HerdRecords *db, JsonObject *request, const HerdRecordsHubView *view,
                                    HerdFrames *buffers);
/* history_request (§7.3): ids of requested records sorted by submitted. */
JsonNode *herd_records_history_reply(HerdRecords *db);
/* db_request content {"query": {...}, "keys": [...] | null} (§7.4). */
JsonNode *herd_records_db_reply(HerdRecords *db, JsonObject *request, HerdFrames *buffers);
/* purge_request content {"msg_ids": [...] | "all", "engine_ids": [...]} (§7.5). */
JsonNode *herd_records_purge(HerdRecords *db, JsonObject *request, const HerdRecordsHubView *view);

/* ---- resubmit (§7.6) ---- */

/* What the hub needs to rebuild one request. */
typedef struct HerdResubmitSource {
    char *msg_id;     /* the original id */
    JsonNode *header; /* a private copy of the stored request header, to edit */
    HerdFrames parts; /* [0] = the stored request content frame, [1..] = its buffers */
} HerdResubmitSource;

/* Looks up every id of the request content's msg_ids (duplicates count once), in that
 * order. On success returns NULL and sets *sources to a GPtrArray of HerdResubmitSource*
 * that frees them (caller unrefs). Otherwise returns the error content (KeyError "No such
 * msg(s): [...]", or the NoDB error) and *sources is NULL. */
JsonNode *herd_records_resubmit_lookup(HerdRecords *db, JsonObject *request, GPtrArray **sources);

/* ---- introspection (stats, tests) ---- */

guint herd_records_count(const HerdRecords *db);
guint64 herd_records_buffer_bytes(const HerdRecords *db);
gboolean herd_records_contains(HerdRecords *db, const char *msg_id);
/* The whole record as db_reply shows it (every field but the two buffer lists), or NULL. */
JsonNode *herd_records_get(HerdRecords *db, const char *msg_id);

/* ---- backends ---- */

/* State of one msg_id as a backend sees it. */
typedef enum {
    HERD_RECORD_UNKNOWN = 0, /* no record */
    HERD_RECORD_WAITING,     /* a request without a final reply */
    HERD_RECORD_OUTPUT_ONLY, /* IOPub output only: the request was never seen */
    HERD_RECORD_FINISHED,    /* a record with a reply (or a stranded-request error) */
} HerdRecordState;

/* A backend implements these; its state struct embeds HerdRecords as first member. The
 * public functions above check arguments, decode HerdMsgFields when the caller passed
 * NULL, implement the query rules (sorting, pending, errors) and call these for storage.
 * A NULL update operation means "store nothing"; a NULL query operation makes the query
 * answer the NoDB error. */
typedef struct HerdRecordsBackend {
    const char *name;
    void (*destroy)(HerdRecords *db);
    /* updates: fields are always filled in */
    gboolean (*add_request)(HerdRecords *db, const HerdFrames *msg, const char *queue,
                            const char *engine_uuid, const HerdMsgFields *fields);
    void (*set_engine)(HerdRecords *db, const char *msg_id, const char *engine_uuid);
    gboolean (*add_reply)(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields, gint64 now);
    gboolean (*add_result_error)(HerdRecords *db, const char *msg_id, const char *engine_uuid,
                                 JsonNode *error_content, gint64 now);
    gboolean (*add_iopub)(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields);
    void (*set_resubmitted)(HerdRecords *db, const char *old_msg_id, const char *new_msg_id);
    /* queries. result: when entry is non-NULL and the record is finished, set *entry to the
     * §7.2 per-message object and append its result buffers to buffers. */
    HerdRecordState (*result)(HerdRecords *db, const char *msg_id, JsonNode **entry, HerdFrames *buffers);
    JsonNode *(*history_reply)(HerdRecords *db);
    JsonNode *(*db_reply)(HerdRecords *db, JsonObject *request, HerdFrames *buffers);
    HerdResubmitSource *(*resubmit_source)(HerdRecords *db, const char *msg_id);
    /* purge: drop one record (any state); drop every finished record, or those of one
     * engine when engine_uuid is non-NULL */
    void (*drop)(HerdRecords *db, const char *msg_id);
    void (*drop_finished)(HerdRecords *db, const char *engine_uuid);
    /* introspection */
    guint (*count)(const HerdRecords *db);
    guint64 (*buffer_bytes)(const HerdRecords *db);
    JsonNode *(*get)(HerdRecords *db, const char *msg_id);
} HerdRecordsBackend;

struct HerdRecords {
    const HerdRecordsBackend *backend;
    HerdRecordLimits limits;
};

G_END_DECLS
