/* herd — the hub's task-record store and its queries (spec §6.2, §6.4, §7.2–7.6, §8).
 * The API and the cost model are described in records.h.
 *
 * Layout of this file: small helpers (Python-style error texts, JSON), the record and the
 * in-memory backend (updates, culling), record fields as query values, the query language
 * of db_request, the in-memory queries, the "none" backend, and the public functions that
 * check arguments and apply the rules shared by every backend.
 */
#define G_LOG_DOMAIN "herd"

#include "records.h"
#include "herd/hash.h"

#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* Helpers: Python-compatible error texts, JSON values                                    */
/* ------------------------------------------------------------------------------------ */

/* Python's repr() of a str, which is what str(KeyError(s)) and "%r" print: single quotes,
 * or double quotes when the text holds a single quote and no double quote. */
static void append_py_repr(GString *out, const char *s)
{
    char quote = (strchr(s, '\'') && !strchr(s, '"')) ? '"' : '\'';
    g_string_append_c(out, quote);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == (unsigned char)quote) {
            g_string_append_c(out, '\\');
            g_string_append_c(out, (char)*p);
        } else if (*p == '\n') {
            g_string_append(out, "\\n");
        } else if (*p == '\r') {
            g_string_append(out, "\\r");
        } else if (*p == '\t') {
            g_string_append(out, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            g_string_append_printf(out, "\\x%02x", *p);
        } else {
            g_string_append_c(out, (char)*p);
        }
    }
    g_string_append_c(out, quote);
}

/* A KeyError whose evalue is repr(message), as Python's str(KeyError(message)) reads. */
static JsonNode *key_error(const char *message)
{
    GString *evalue = g_string_new(NULL);
    append_py_repr(evalue, message);
    JsonNode *content = herd_error_content("KeyError", evalue->str);
    g_string_free(evalue, TRUE);
    return content;
}

static JsonNode *nodb_error(void)
{
    return herd_error_content("KeyError", HERD_RECORDS_NODB_EVALUE);
}

static JsonNode *new_object_node(JsonObject **object)
{
    JsonNode *node = json_node_new(JSON_NODE_OBJECT);
    *object = json_object_new();
    json_node_take_object(node, *object);
    return node;
}

static JsonNode *ok_content(JsonObject **object)
{
    JsonNode *node = new_object_node(object);
    json_object_set_string_member(*object, "status", "ok");
    return node;
}

static JsonNode *string_node(const char *s)
{
    JsonNode *node = json_node_alloc();
    return s ? json_node_init_string(node, s) : json_node_init_null(node);
}

static JsonNode *date_node(gint64 usec)
{
    if (usec == HERD_RECORD_NO_DATE)
        return json_node_new(JSON_NODE_NULL);
    char iso[HERD_ISO_LEN];
    herd_iso_format(usec, iso);
    return string_node(iso);
}

static gboolean node_is_string(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING;
}

static gboolean node_is_int(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64;
}

static gboolean node_is_number(JsonNode *node)
{
    return node_is_int(node) ||
           (node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_DOUBLE);
}

static gboolean node_as_date(JsonNode *node, gint64 *usec)
{
    return node_is_string(node) && herd_iso_parse(json_node_get_string(node), usec);
}

/* Python truthiness, for $exists. */
static gboolean node_truthy(JsonNode *node)
{
    switch (json_node_get_node_type(node)) {
    case JSON_NODE_NULL:
        return FALSE;
    case JSON_NODE_ARRAY:
        return json_array_get_length(json_node_get_array(node)) > 0;
    case JSON_NODE_OBJECT:
        return json_object_get_size(json_node_get_object(node)) > 0;
    case JSON_NODE_VALUE:
        break;
    }
    GType type = json_node_get_value_type(node);
    if (type == G_TYPE_BOOLEAN)
        return json_node_get_boolean(node);
    if (type == G_TYPE_INT64)
        return json_node_get_int(node) != 0;
    if (type == G_TYPE_DOUBLE)
        return json_node_get_double(node) != 0.0;
    const char *s = json_node_get_string(node);
    return s && *s;
}

/* Any JSON text (a stored frame) as a node; empty or unparsable text reads as null. */
static JsonNode *json_from_text(const char *data, gsize len)
{
    if (data == NULL || len == 0)
        return json_node_new(JSON_NODE_NULL);
    JsonParser *parser = json_parser_new();
    JsonNode *node = NULL;
    if (json_parser_load_from_data(parser, data, (gssize)len, NULL))
        node = json_parser_steal_root(parser);
    g_object_unref(parser);
    return node ? node : json_node_new(JSON_NODE_NULL);
}

static gint64 parse_date_or(const char *iso, gint64 fallback)
{
    gint64 usec;
    return iso && herd_iso_parse(iso, &usec) ? usec : fallback;
}

/* The strings of a JSON array; FALSE when node is neither absent, null nor an array of
 * strings. The strings stay owned by node. */
static gboolean string_list(JsonNode *node, GPtrArray *out)
{
    if (node == NULL || JSON_NODE_HOLDS_NULL(node))
        return TRUE;
    if (!JSON_NODE_HOLDS_ARRAY(node))
        return FALSE;
    JsonArray *array = json_node_get_array(node);
    for (guint i = 0; i < json_array_get_length(array); i++) {
        JsonNode *element = json_array_get_element(array, i);
        if (!node_is_string(element))
            return FALSE;
        g_ptr_array_add(out, (gpointer)json_node_get_string(element));
    }
    return TRUE;
}

static gboolean string_list_member(JsonObject *object, const char *member, GPtrArray *out)
{
    return string_list(object ? json_object_get_member(object, member) : NULL, out);
}

/* Drops repeated strings, keeping the first occurrence. */
static void dedupe_strings(GPtrArray *strings)
{
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    guint kept = 0;
    for (guint i = 0; i < strings->len; i++) {
        if (g_hash_table_add(seen, strings->pdata[i]))
            strings->pdata[kept++] = strings->pdata[i];
    }
    g_ptr_array_set_size(strings, kept);
    g_hash_table_destroy(seen);
}

static gint compare_strings(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* ------------------------------------------------------------------------------------ */
/* Records                                                                                */
/* ------------------------------------------------------------------------------------ */

/* A stored message keeps the frames from the header on. */
enum { PART_HEADER = 0, PART_PARENT, PART_METADATA, PART_CONTENT, PART_BUFFERS };

/* Frames below this size are copied rather than shared: libzmq receives small messages
 * into shared receive batches (8 KiB by default), and a reference kept for the life of a
 * record would pin a whole batch. Bigger frames have their own body, which is shared by
 * reference count (zero-copy). */
#define RETAIN_COPY_BELOW 1024

/* A stored message: its parts from the header on. The copied parts lie back to back
 * after the part table in one allocation, so storing a message costs one malloc instead
 * of one per frame (records are written for every task); the shared ones are frames. */
typedef struct StoredPart {
    gsize at;         /* offset in the copied bytes, or index in `shared` */
    gsize len;
    gboolean is_shared;
} StoredPart;

typedef struct Stored {
    guint n;           /* parts; 0 while nothing is stored */
    StoredPart *parts; /* the allocation: n parts, then the copied bytes */
    HerdFrames shared; /* the parts of RETAIN_COPY_BELOW bytes and more */
} Stored;

typedef struct Record {
    GList all_link;      /* in MemoryStore.all (creation order); data = the record */
    GList finished_link; /* in MemoryStore.finished while the record may be culled */
    gboolean in_finished;
    char *msg_id;        /* stored right after the record, in the same allocation */
    Stored request;      /* [header, parent, metadata, content, buffers...]; empty until seen */
    Stored reply;        /* same layout; empty until answered */
    char *client_uuid;   /* GRefString (interned: many records share a few uuids) */
    char *engine_uuid;   /* GRefString */
    const char *queue;   /* interned */
    char *resubmitted;
    gint64 submitted, started, completed, received;
    char *execute_input;
    char *execute_result; /* IOPub content as received (JSON text) */
    char *error;          /* IOPub content as received (JSON text) */
    GString *out, *err;   /* NULL reads as "" */
    guint64 buffer_bytes; /* request + result buffers */
} Record;

static void stored_init(Stored *st)
{
    st->n = 0;
    st->parts = NULL;
    herd_frames_init(&st->shared);
}

static void stored_clear(Stored *st)
{
    g_free(st->parts);
    herd_frames_clear(&st->shared);
    stored_init(st);
}

/* Store msg's frames from index `first` on, replacing what st held. */
static void stored_set(Stored *st, const HerdFrames *msg, guint first)
{
    stored_clear(st);
    guint n = msg->n > first ? msg->n - first : 0;
    gsize copied = 0;
    for (guint i = 0; i < n; i++) {
        gsize size = herd_frame_size(msg, first + i);
        if (size < RETAIN_COPY_BELOW)
            copied += size;
    }
    st->parts = g_malloc(n * sizeof(StoredPart) + copied);
    st->n = n;
    char *bytes = (char *)(st->parts + n);
    gsize at = 0;
    for (guint i = 0; i < n; i++) {
        gsize size = herd_frame_size(msg, first + i);
        if (size < RETAIN_COPY_BELOW) {
            if (size > 0)
                memcpy(bytes + at, herd_frame_data(msg, first + i), size);
            st->parts[i] = (StoredPart){ .at = at, .len = size, .is_shared = FALSE };
            at += size;
        } else {
            st->parts[i] = (StoredPart){ .at = st->shared.n, .len = size, .is_shared = TRUE };
            herd_frames_push_frame_copy(&st->shared, msg, first + i);
        }
    }
}

static void retain_message(Stored *dst, const HerdFrames *msg)
{
    stored_set(dst, msg, herd_wire(msg, HERD_WIRE_HEADER));
}

static const char *stored_data(const Stored *st, guint part)
{
    const StoredPart *p = &st->parts[part];
    return p->is_shared ? herd_frame_data(&st->shared, (guint)p->at) : (const char *)(st->parts + st->n) + p->at;
}

static gsize stored_size(const Stored *st, guint part)
{
    return st->parts[part].len;
}

/* Append part `part` to out: the shared frame by reference, a copied one copied again. */
static void stored_push_part(HerdFrames *out, const Stored *st, guint part)
{
    const StoredPart *p = &st->parts[part];
    if (p->is_shared)
        herd_frames_push_frame_copy(out, &st->shared, (guint)p->at);
    else
        herd_frames_push(out, stored_data(st, part), p->len);
}

static guint stored_buffer_count(const Stored *stored)
{
    return stored->n > PART_BUFFERS ? stored->n - PART_BUFFERS : 0;
}

static guint64 stored_buffer_bytes(const Stored *stored)
{
    guint64 total = 0;
    for (guint i = PART_BUFFERS; i < stored->n; i++)
        total += stored_size(stored, i);
    return total;
}

static void append_stored_buffers(HerdFrames *out, const Stored *stored)
{
    for (guint i = PART_BUFFERS; i < stored->n; i++)
        stored_push_part(out, stored, i);
}

static void ref_string_set(char **slot, const char *value)
{
    if (*slot && value && strcmp(*slot, value) == 0)
        return;
    if (*slot)
        g_ref_string_release(*slot);
    *slot = value ? g_ref_string_new_intern(value) : NULL;
}

/* May culling drop it? Everything but a request still waiting for its reply. */
static gboolean record_is_finished(const Record *rec)
{
    return rec->reply.n > 0 || rec->request.n == 0;
}

static HerdRecordState record_state(const Record *rec)
{
    if (rec->reply.n > 0)
        return HERD_RECORD_FINISHED;
    return rec->request.n > 0 ? HERD_RECORD_WAITING : HERD_RECORD_OUTPUT_ONLY;
}

static Record *record_new(const char *msg_id)
{
    gsize id_size = strlen(msg_id) + 1;
    Record *rec = g_malloc0(sizeof(Record) + id_size); /* the id lives right after it */
    rec->all_link.data = rec;
    rec->finished_link.data = rec;
    rec->msg_id = memcpy(rec + 1, msg_id, id_size);
    stored_init(&rec->request);
    stored_init(&rec->reply);
    rec->submitted = rec->started = rec->completed = rec->received = HERD_RECORD_NO_DATE;
    return rec;
}

static void record_free(Record *rec)
{
    stored_clear(&rec->request);
    stored_clear(&rec->reply);
    ref_string_set(&rec->client_uuid, NULL);
    ref_string_set(&rec->engine_uuid, NULL);
    g_free(rec->resubmitted);
    g_free(rec->execute_input);
    g_free(rec->execute_result);
    g_free(rec->error);
    if (rec->out)
        g_string_free(rec->out, TRUE);
    if (rec->err)
        g_string_free(rec->err, TRUE);
    g_free(rec);
}

/* ------------------------------------------------------------------------------------ */
/* The in-memory backend: storage and culling                                             */
/* ------------------------------------------------------------------------------------ */

typedef struct MemoryStore {
    HerdRecords base;
    GHashTable *by_id; /* msg_id (the record's own string) -> Record */
    GQueue all;        /* every record, in creation order (db_reply order) */
    GQueue finished;   /* records culling may drop, oldest finished first */
    guint64 buffer_bytes;
} MemoryStore;

static MemoryStore *memory(HerdRecords *db)
{
    return (MemoryStore *)db;
}

static const MemoryStore *memory_const(const HerdRecords *db)
{
    return (const MemoryStore *)db;
}

static Record *memory_lookup(MemoryStore *s, const char *msg_id)
{
    return msg_id ? g_hash_table_lookup(s->by_id, msg_id) : NULL;
}

static Record *memory_insert(MemoryStore *s, const char *msg_id)
{
    Record *rec = record_new(msg_id);
    g_hash_table_insert(s->by_id, rec->msg_id, rec);
    g_queue_push_tail_link(&s->all, &rec->all_link);
    return rec;
}

/* Keep the record's place in the culling queue in step with its state. */
static void memory_track_finished(MemoryStore *s, Record *rec)
{
    gboolean finished = record_is_finished(rec);
    if (finished && !rec->in_finished) {
        g_queue_push_tail_link(&s->finished, &rec->finished_link);
        rec->in_finished = TRUE;
    } else if (!finished && rec->in_finished) {
        g_queue_unlink(&s->finished, &rec->finished_link);
        rec->in_finished = FALSE;
    }
}

static void memory_account(MemoryStore *s, Record *rec)
{
    guint64 bytes = stored_buffer_bytes(&rec->request) + stored_buffer_bytes(&rec->reply);
    s->buffer_bytes = s->buffer_bytes - rec->buffer_bytes + bytes;
    rec->buffer_bytes = bytes;
}

static void memory_remove(MemoryStore *s, Record *rec)
{
    g_queue_unlink(&s->all, &rec->all_link);
    if (rec->in_finished)
        g_queue_unlink(&s->finished, &rec->finished_link);
    s->buffer_bytes -= rec->buffer_bytes;
    g_hash_table_remove(s->by_id, rec->msg_id);
    record_free(rec);
}

static guint memory_cull_oldest(MemoryStore *s, guint n)
{
    guint culled = 0;
    while (culled < n && s->finished.head) {
        memory_remove(s, s->finished.head->data);
        culled++;
    }
    return culled;
}

/* DictDB's rules (spec §8.3), restricted to finished records. */
static void memory_maybe_cull(MemoryStore *s)
{
    const HerdRecordLimits *limits = &s->base.limits;
    guint count = g_hash_table_size(s->by_id);
    if (limits->record_limit > 0 && count > limits->record_limit) {
        guint batch = (guint)(limits->cull_fraction * limits->record_limit);
        batch = MAX(batch, count - limits->record_limit);
        guint culled = memory_cull_oldest(s, batch);
        g_debug("records: %u records exceed the limit of %u, culled the oldest %u", count,
                limits->record_limit, culled);
    }
    if (limits->size_limit > 0 && s->buffer_bytes > limits->size_limit) {
        guint64 before = s->buffer_bytes;
        guint64 target = (guint64)((double)limits->size_limit * (1.0 - limits->cull_fraction));
        guint culled = 0;
        while (s->buffer_bytes > target && s->finished.head)
            culled += memory_cull_oldest(s, 1);
        g_debug("records: %" G_GUINT64_FORMAT " bytes of buffers exceed the limit of %" G_GUINT64_FORMAT
                ", culled the oldest %u records",
                before, limits->size_limit, culled);
    }
}

static gboolean memory_add_request(HerdRecords *db, const HerdFrames *msg, const char *queue,
                                   const char *engine_uuid, const HerdMsgFields *fields)
{
    MemoryStore *s = memory(db);
    Record *rec = memory_lookup(s, fields->msg_id);
    if (rec == NULL)
        rec = memory_insert(s, fields->msg_id);
    /* A request already stored wins: a resubmission is recorded by the hub before the same
     * frames pass the scheduler, and its submitted/client_uuid/buffers must not change. */
    if (rec->request.n == 0) {
        retain_message(&rec->request, msg);
        memory_account(s, rec);
        rec->submitted = parse_date_or(fields->date, HERD_RECORD_NO_DATE);
        ref_string_set(&rec->client_uuid, fields->session);
    }
    if (queue)
        rec->queue = g_intern_string(queue);
    if (engine_uuid)
        ref_string_set(&rec->engine_uuid, engine_uuid);
    memory_track_finished(s, rec);
    memory_maybe_cull(s);
    return TRUE;
}

static void memory_set_engine(HerdRecords *db, const char *msg_id, const char *engine_uuid)
{
    Record *rec = memory_lookup(memory(db), msg_id);
    if (rec)
        ref_string_set(&rec->engine_uuid, engine_uuid);
}

static gboolean memory_add_reply(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields, gint64 now)
{
    MemoryStore *s = memory(db);
    Record *rec = memory_lookup(s, fields->msg_id);
    if (rec == NULL)
        return FALSE;
    retain_message(&rec->reply, msg);
    memory_account(s, rec);
    rec->started = parse_date_or(fields->started, HERD_RECORD_NO_DATE);
    rec->completed = parse_date_or(fields->date, now);
    rec->received = now;
    if (fields->engine)
        ref_string_set(&rec->engine_uuid, fields->engine);
    memory_track_finished(s, rec);
    memory_maybe_cull(s);
    return TRUE;
}

static gboolean memory_add_result_error(HerdRecords *db, const char *msg_id, const char *engine_uuid,
                                        JsonNode *error_content, gint64 now)
{
    MemoryStore *s = memory(db);
    Record *rec = memory_lookup(s, msg_id);
    if (rec == NULL)
        return FALSE;

    /* The fake reply of 7.1: a header with only engine and date, no parent, no metadata. */
    JsonObject *header;
    JsonNode *header_node = new_object_node(&header);
    json_object_set_string_member(header, "engine", engine_uuid ? engine_uuid : "");
    json_object_set_member(header, "date", date_node(now));
    gsize len;
    char *text;

    HerdFrames parts;
    herd_frames_init(&parts);
    text = herd_json_to_string(header_node, &len);
    herd_frames_push_take(&parts, text, len);
    herd_frames_push(&parts, "", 0); /* parent: none */
    herd_frames_push(&parts, "", 0); /* metadata: none (null) */
    text = herd_json_to_string(error_content, &len);
    herd_frames_push_take(&parts, text, len);
    json_node_unref(header_node);
    stored_set(&rec->reply, &parts, 0);
    herd_frames_clear(&parts);

    memory_account(s, rec);
    rec->completed = now;
    if (engine_uuid)
        ref_string_set(&rec->engine_uuid, engine_uuid);
    memory_track_finished(s, rec);
    memory_maybe_cull(s);
    return TRUE;
}

typedef enum { IOPUB_IGNORED, IOPUB_STREAM, IOPUB_EXECUTE_INPUT, IOPUB_EXECUTE_RESULT, IOPUB_ERROR } IopubKind;

static IopubKind iopub_kind(const char *msg_type)
{
    if (msg_type == NULL)
        return IOPUB_IGNORED;
    if (strcmp(msg_type, "stream") == 0)
        return IOPUB_STREAM;
    if (strcmp(msg_type, "execute_input") == 0)
        return IOPUB_EXECUTE_INPUT;
    if (strcmp(msg_type, "execute_result") == 0)
        return IOPUB_EXECUTE_RESULT;
    if (strcmp(msg_type, "error") == 0)
        return IOPUB_ERROR;
    return IOPUB_IGNORED; /* status, display_data, data_pub, ...: not record fields */
}

static GString **stream_slot(Record *rec, const char *name)
{
    if (g_strcmp0(name, "stdout") == 0)
        return &rec->out;
    if (g_strcmp0(name, "stderr") == 0)
        return &rec->err;
    return NULL;
}

static gboolean memory_add_iopub(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields)
{
    MemoryStore *s = memory(db);
    IopubKind kind = iopub_kind(fields->msg_type);
    if (kind == IOPUB_IGNORED || fields->msg_id == NULL || *fields->msg_id == '\0')
        return FALSE;

    HerdBytes content = herd_frame_bytes(msg, herd_wire(msg, HERD_WIRE_CONTENT));
    JsonNode *parsed = NULL;
    const char *name = NULL, *text = NULL;
    if (kind == IOPUB_STREAM || kind == IOPUB_EXECUTE_INPUT) {
        parsed = herd_json_parse_object(content, NULL);
        if (parsed == NULL)
            return FALSE;
        JsonObject *o = json_node_get_object(parsed);
        name = herd_json_str(o, "name");
        text = herd_json_str(o, kind == IOPUB_STREAM ? "text" : "code");
        if (text == NULL || (kind == IOPUB_STREAM && g_strcmp0(name, "stdout") != 0 &&
                             g_strcmp0(name, "stderr") != 0)) {
            json_node_unref(parsed);
            return FALSE;
        }
    }

    Record *rec = memory_lookup(s, fields->msg_id);
    gboolean created = rec == NULL;
    if (created)
        rec = memory_insert(s, fields->msg_id); /* an "orphan": output before (or without) its request */

    switch (kind) {
    case IOPUB_STREAM: {
        GString **slot = stream_slot(rec, name);
        if (*slot == NULL)
            *slot = g_string_new(NULL);
        g_string_append(*slot, text);
        break;
    }
    case IOPUB_EXECUTE_INPUT:
        g_free(rec->execute_input);
        rec->execute_input = g_strdup(text);
        break;
    case IOPUB_EXECUTE_RESULT:
        g_free(rec->execute_result);
        rec->execute_result = g_strndup(content.data, content.len);
        break;
    case IOPUB_ERROR:
        g_free(rec->error);
        rec->error = g_strndup(content.data, content.len);
        break;
    case IOPUB_IGNORED:
        break;
    }
    if (parsed)
        json_node_unref(parsed);
    if (created) {
        memory_track_finished(s, rec);
        memory_maybe_cull(s);
    }
    return TRUE;
}

static void memory_set_resubmitted(HerdRecords *db, const char *old_msg_id, const char *new_msg_id)
{
    Record *rec = memory_lookup(memory(db), old_msg_id);
    if (rec) {
        g_free(rec->resubmitted);
        rec->resubmitted = g_strdup(new_msg_id);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Record fields as values                                                                */
/* ------------------------------------------------------------------------------------ */

/* The 22 fields of spec §8.1, in the order replies list them. */
typedef enum {
    F_MSG_ID,
    F_HEADER,
    F_METADATA,
    F_CONTENT,
    F_BUFFERS,
    F_SUBMITTED,
    F_CLIENT_UUID,
    F_ENGINE_UUID,
    F_STARTED,
    F_COMPLETED,
    F_RESUBMITTED,
    F_RECEIVED,
    F_RESULT_HEADER,
    F_RESULT_METADATA,
    F_RESULT_CONTENT,
    F_RESULT_BUFFERS,
    F_QUEUE,
    F_EXECUTE_INPUT,
    F_EXECUTE_RESULT,
    F_ERROR,
    F_STDOUT,
    F_STDERR,
    F_COUNT,
    F_UNKNOWN = F_COUNT, /* a name that is no field: always null, as rec.get() in 7.1 */
} RecordField;

static const char *const field_names[F_COUNT] = {
    "msg_id",        "header",          "metadata",       "content",        "buffers",     "submitted",
    "client_uuid",   "engine_uuid",     "started",        "completed",      "resubmitted", "received",
    "result_header", "result_metadata", "result_content", "result_buffers", "queue",       "execute_input",
    "execute_result", "error",          "stdout",         "stderr",
};

static RecordField field_by_name(const char *name)
{
    for (int f = 0; f < F_COUNT; f++) {
        if (strcmp(field_names[f], name) == 0)
            return (RecordField)f;
    }
    return F_UNKNOWN;
}

typedef enum { V_NULL, V_STRING, V_DATE, V_JSON, V_BUFFERS } ValueKind;

/* One field of one record, as the query language sees it. */
typedef struct FieldValue {
    ValueKind kind;
    const char *str;  /* V_STRING: borrowed from the record */
    gint64 date;      /* V_DATE */
    JsonNode *json;   /* V_JSON: owned */
    guint n_buffers;  /* V_BUFFERS */
} FieldValue;

static void value_clear(FieldValue *v)
{
    if (v->json)
        json_node_unref(v->json);
    memset(v, 0, sizeof *v);
}

static void value_set_string(FieldValue *v, const char *s)
{
    v->kind = s ? V_STRING : V_NULL;
    v->str = s;
}

static void value_set_date(FieldValue *v, gint64 usec)
{
    v->kind = usec == HERD_RECORD_NO_DATE ? V_NULL : V_DATE;
    v->date = usec;
}

static void value_set_json_text(FieldValue *v, const char *data, gsize len)
{
    JsonNode *node = json_from_text(data, len);
    if (JSON_NODE_HOLDS_NULL(node)) {
        json_node_unref(node);
        v->kind = V_NULL;
        return;
    }
    v->kind = V_JSON;
    v->json = node;
}

static void value_set_part(FieldValue *v, const Stored *stored, guint part)
{
    if (stored->n <= part)
        v->kind = V_NULL;
    else
        value_set_json_text(v, stored_data(stored, part), stored_size(stored, part));
}

static void value_set_buffers(FieldValue *v, const Stored *stored)
{
    v->kind = stored->n == 0 ? V_NULL : V_BUFFERS;
    v->n_buffers = stored_buffer_count(stored);
}

static void record_value(const Record *rec, RecordField field, FieldValue *v)
{
    memset(v, 0, sizeof *v);
    switch (field) {
    case F_MSG_ID: value_set_string(v, rec->msg_id); break;
    case F_HEADER: value_set_part(v, &rec->request, PART_HEADER); break;
    case F_METADATA: value_set_part(v, &rec->request, PART_METADATA); break;
    case F_CONTENT: value_set_part(v, &rec->request, PART_CONTENT); break;
    case F_BUFFERS: value_set_buffers(v, &rec->request); break;
    case F_SUBMITTED: value_set_date(v, rec->submitted); break;
    case F_CLIENT_UUID: value_set_string(v, rec->client_uuid); break;
    case F_ENGINE_UUID: value_set_string(v, rec->engine_uuid); break;
    case F_STARTED: value_set_date(v, rec->started); break;
    case F_COMPLETED: value_set_date(v, rec->completed); break;
    case F_RESUBMITTED: value_set_string(v, rec->resubmitted); break;
    case F_RECEIVED: value_set_date(v, rec->received); break;
    case F_RESULT_HEADER: value_set_part(v, &rec->reply, PART_HEADER); break;
    case F_RESULT_METADATA: value_set_part(v, &rec->reply, PART_METADATA); break;
    case F_RESULT_CONTENT: value_set_part(v, &rec->reply, PART_CONTENT); break;
    case F_RESULT_BUFFERS: value_set_buffers(v, &rec->reply); break;
    case F_QUEUE: value_set_string(v, rec->queue); break;
    case F_EXECUTE_INPUT: value_set_string(v, rec->execute_input); break;
    case F_EXECUTE_RESULT:
        value_set_json_text(v, rec->execute_result, rec->execute_result ? strlen(rec->execute_result) : 0);
        break;
    case F_ERROR: value_set_json_text(v, rec->error, rec->error ? strlen(rec->error) : 0); break;
    case F_STDOUT: value_set_string(v, rec->out ? rec->out->str : ""); break;
    case F_STDERR: value_set_string(v, rec->err ? rec->err->str : ""); break;
    case F_UNKNOWN: v->kind = V_NULL; break;
    }
}

/* The field as it appears in a reply (buffers never do: they travel as frames). */
static JsonNode *record_field_node(const Record *rec, RecordField field)
{
    FieldValue v;
    record_value(rec, field, &v);
    JsonNode *node;
    switch (v.kind) {
    case V_STRING: node = string_node(v.str); break;
    case V_DATE: node = date_node(v.date); break;
    case V_JSON: node = v.json; v.json = NULL; break;
    case V_NULL:
    case V_BUFFERS:
    default: node = json_node_new(JSON_NODE_NULL); break;
    }
    value_clear(&v);
    return node;
}

static void set_field(JsonObject *object, const Record *rec, RecordField field)
{
    json_object_set_member(object, field_names[field], record_field_node(rec, field));
}

/* Every field but the two buffer lists (db_reply with keys null, herd_records_get). */
static JsonNode *record_full_node(const Record *rec)
{
    JsonObject *object;
    JsonNode *node = new_object_node(&object);
    for (int f = 0; f < F_COUNT; f++) {
        if (f != F_BUFFERS && f != F_RESULT_BUFFERS)
            set_field(object, rec, (RecordField)f);
    }
    return node;
}

/* The per-message object of result_reply (§7.2), in 7.1's key order. */
static JsonNode *record_result_entry(const Record *rec)
{
    JsonObject *entry, *io;
    JsonNode *node = new_object_node(&entry);
    set_field(entry, rec, F_HEADER);
    set_field(entry, rec, F_METADATA);
    set_field(entry, rec, F_RESULT_METADATA);
    set_field(entry, rec, F_RESULT_HEADER);
    set_field(entry, rec, F_RESULT_CONTENT);
    set_field(entry, rec, F_RECEIVED);
    JsonNode *io_node = new_object_node(&io);
    set_field(io, rec, F_EXECUTE_INPUT);
    set_field(io, rec, F_EXECUTE_RESULT);
    set_field(io, rec, F_ERROR);
    set_field(io, rec, F_STDOUT);
    set_field(io, rec, F_STDERR);
    json_object_set_member(entry, "io", io_node);
    return node;
}

/* ------------------------------------------------------------------------------------ */
/* The db_request query language (§7.4)                                                   */
/* ------------------------------------------------------------------------------------ */

typedef enum { OP_EQ, OP_NE, OP_LT, OP_LTE, OP_GT, OP_GTE, OP_IN, OP_NIN, OP_EXISTS, OP_MOD, OP_ALL } QueryOp;

static const struct {
    const char *name;
    QueryOp op;
} query_ops[] = {
    { "$eq", OP_EQ }, { "$ne", OP_NE },   { "$lt", OP_LT },         { "$lte", OP_LTE },
    { "$gt", OP_GT }, { "$gte", OP_GTE }, { "$in", OP_IN },         { "$nin", OP_NIN },
    { "$exists", OP_EXISTS }, { "$mod", OP_MOD }, { "$all", OP_ALL },
};

/* One test on one field; the argument is borrowed from the request content. */
typedef struct Condition {
    RecordField field;
    QueryOp op;
    JsonNode *arg;
} Condition;

static gboolean lookup_op(const char *name, QueryOp *op)
{
    for (gsize i = 0; i < G_N_ELEMENTS(query_ops); i++) {
        if (strcmp(query_ops[i].name, name) == 0) {
            *op = query_ops[i].op;
            return TRUE;
        }
    }
    return FALSE;
}

/* NULL when the argument suits the operator, else the error content. */
static JsonNode *check_argument(const char *name, QueryOp op, JsonNode *arg)
{
    if ((op == OP_IN || op == OP_NIN || op == OP_ALL) && !JSON_NODE_HOLDS_ARRAY(arg)) {
        char *evalue = g_strdup_printf("%s needs a list", name);
        JsonNode *error = herd_error_content("TypeError", evalue);
        g_free(evalue);
        return error;
    }
    if (op == OP_MOD) {
        JsonArray *pair = JSON_NODE_HOLDS_ARRAY(arg) ? json_node_get_array(arg) : NULL;
        if (pair == NULL || json_array_get_length(pair) != 2 || !node_is_int(json_array_get_element(pair, 0)) ||
            !node_is_int(json_array_get_element(pair, 1)))
            return herd_error_content("TypeError", "$mod needs [divisor, remainder] integers");
        if (json_array_get_int_element(pair, 0) == 0)
            return herd_error_content("ZeroDivisionError", "integer division or modulo by zero");
    }
    return NULL;
}

/* Turns the query object into conditions; returns the error content or NULL. */
static JsonNode *compile_query(JsonNode *query, GArray *conditions)
{
    if (query == NULL || JSON_NODE_HOLDS_NULL(query))
        return NULL;
    if (!JSON_NODE_HOLDS_OBJECT(query))
        return herd_error_content("TypeError", "query must be an object");

    JsonObjectIter fields;
    const char *field_name;
    JsonNode *test;
    json_object_iter_init(&fields, json_node_get_object(query));
    while (json_object_iter_next(&fields, &field_name, &test)) {
        RecordField field = field_by_name(field_name);
        if (!JSON_NODE_HOLDS_OBJECT(test)) { /* a literal: equality */
            Condition c = { field, OP_EQ, test };
            g_array_append_val(conditions, c);
            continue;
        }
        JsonObjectIter ops;
        const char *op_name;
        JsonNode *arg;
        json_object_iter_init(&ops, json_node_get_object(test));
        while (json_object_iter_next(&ops, &op_name, &arg)) {
            QueryOp op;
            if (!lookup_op(op_name, &op))
                return key_error(op_name);
            JsonNode *error = check_argument(op_name, op, arg);
            if (error)
                return error;
            Condition c = { field, op, arg };
            g_array_append_val(conditions, c);
        }
    }
    return NULL;
}

/* Equality as Python's == on the values 7.1 stores: dates equal dates (the query's date
 * strings are parsed), strings equal strings, JSON structures compare structurally. */
static gboolean value_equals(const FieldValue *v, JsonNode *arg)
{
    if (JSON_NODE_HOLDS_NULL(arg))
        return v->kind == V_NULL;
    gint64 date;
    switch (v->kind) {
    case V_STRING: return node_is_string(arg) && strcmp(v->str, json_node_get_string(arg)) == 0;
    case V_DATE: return node_as_date(arg, &date) && date == v->date;
    case V_JSON: return json_node_equal(v->json, arg);
    case V_NULL:
    case V_BUFFERS:
    default: return FALSE;
    }
}

static int sign_of(gint64 difference)
{
    return (difference > 0) - (difference < 0);
}

static gboolean json_values_compare(JsonNode *a, JsonNode *b, int *cmp)
{
    if (node_is_int(a) && node_is_int(b)) {
        gint64 x = json_node_get_int(a), y = json_node_get_int(b);
        *cmp = (x > y) - (x < y);
        return TRUE;
    }
    if (node_is_number(a) && node_is_number(b)) {
        double x = json_node_get_double(a), y = json_node_get_double(b);
        *cmp = (x > y) - (x < y);
        return TRUE;
    }
    if (node_is_string(a) && node_is_string(b)) {
        *cmp = sign_of(strcmp(json_node_get_string(a), json_node_get_string(b)));
        return TRUE;
    }
    return FALSE;
}

/* Ordering for $lt/$lte/$gt/$gte: dates as dates, numbers as numbers, strings by code
 * point. FALSE (no match) when either side is null or the kinds differ. */
static gboolean value_compare(const FieldValue *v, JsonNode *arg, int *cmp)
{
    gint64 date;
    switch (v->kind) {
    case V_DATE:
        if (!node_as_date(arg, &date))
            return FALSE;
        *cmp = (v->date > date) - (v->date < date);
        return TRUE;
    case V_STRING:
        if (!node_is_string(arg))
            return FALSE;
        *cmp = sign_of(strcmp(v->str, json_node_get_string(arg)));
        return TRUE;
    case V_JSON: return json_values_compare(v->json, arg, cmp);
    case V_NULL:
    case V_BUFFERS:
    default: return FALSE;
    }
}

static gboolean value_in(const FieldValue *v, JsonArray *list)
{
    for (guint i = 0; i < json_array_get_length(list); i++) {
        if (value_equals(v, json_array_get_element(list, i)))
            return TRUE;
    }
    return FALSE;
}

/* Python's modulo (the sign of the divisor) on integers. */
static gboolean value_mod(const FieldValue *v, JsonArray *pair)
{
    if (v->kind != V_JSON || !node_is_int(v->json))
        return FALSE;
    gint64 x = json_node_get_int(v->json);
    gint64 divisor = json_array_get_int_element(pair, 0);
    gint64 remainder = json_array_get_int_element(pair, 1);
    gint64 m = divisor == -1 ? 0 : x % divisor;
    if (m != 0 && ((m < 0) != (divisor < 0)))
        m += divisor;
    return m == remainder;
}

/* MongoDB's $all: an array field holds every listed value; a scalar field equals each. */
static gboolean value_all(const FieldValue *v, JsonArray *list)
{
    guint n = json_array_get_length(list);
    if (n == 0 || v->kind == V_NULL)
        return FALSE;
    for (guint i = 0; i < n; i++) {
        JsonNode *wanted = json_array_get_element(list, i);
        gboolean found = FALSE;
        if (v->kind == V_JSON && JSON_NODE_HOLDS_ARRAY(v->json)) {
            JsonArray *have = json_node_get_array(v->json);
            for (guint j = 0; j < json_array_get_length(have) && !found; j++)
                found = json_node_equal(json_array_get_element(have, j), wanted);
        } else {
            found = value_equals(v, wanted);
        }
        if (!found)
            return FALSE;
    }
    return TRUE;
}

static gboolean condition_holds(const Condition *c, const FieldValue *v)
{
    int cmp;
    switch (c->op) {
    case OP_EQ: return value_equals(v, c->arg);
    case OP_NE: return !value_equals(v, c->arg);
    case OP_LT: return value_compare(v, c->arg, &cmp) && cmp < 0;
    case OP_LTE: return value_compare(v, c->arg, &cmp) && cmp <= 0;
    case OP_GT: return value_compare(v, c->arg, &cmp) && cmp > 0;
    case OP_GTE: return value_compare(v, c->arg, &cmp) && cmp >= 0;
    case OP_IN: return value_in(v, json_node_get_array(c->arg));
    case OP_NIN: return !value_in(v, json_node_get_array(c->arg));
    case OP_EXISTS: return node_truthy(c->arg) == (v->kind != V_NULL);
    case OP_MOD: return value_mod(v, json_node_get_array(c->arg));
    case OP_ALL: return value_all(v, json_node_get_array(c->arg));
    }
    return FALSE;
}

/* Field values of one record, computed once per record however many conditions use them. */
typedef struct ValueCache {
    FieldValue values[F_COUNT + 1];
    guint32 loaded; /* bit per field */
} ValueCache;

G_STATIC_ASSERT(F_COUNT + 1 <= 32);

static const FieldValue *cached_value(ValueCache *cache, const Record *rec, RecordField field)
{
    if (!(cache->loaded & (1u << field))) {
        record_value(rec, field, &cache->values[field]);
        cache->loaded |= 1u << field;
    }
    return &cache->values[field];
}

static void cache_clear(ValueCache *cache)
{
    for (int f = 0; f <= F_COUNT; f++) {
        if (cache->loaded & (1u << f))
            value_clear(&cache->values[f]);
    }
    cache->loaded = 0;
}

static gboolean record_matches(const Record *rec, const GArray *conditions)
{
    ValueCache cache = { .loaded = 0 };
    gboolean match = TRUE;
    for (guint i = 0; i < conditions->len && match; i++) {
        const Condition *c = &g_array_index(conditions, Condition, i);
        match = condition_holds(c, cached_value(&cache, rec, c->field));
    }
    cache_clear(&cache);
    return match;
}

/* The fields db_reply puts in each record object, from the request's keys. */
typedef struct Projection {
    GArray *fields; /* RecordField, msg_id first */
    gboolean buffers, result_buffers;
} Projection;

static JsonNode *compile_projection(JsonNode *keys, Projection *p)
{
    GPtrArray *names = g_ptr_array_new();
    JsonNode *error = NULL;
    if (node_is_string(keys)) { /* the client wraps a single key in a list; accept it bare too */
        g_ptr_array_add(names, (gpointer)json_node_get_string(keys));
    } else if (!string_list(keys, names)) {
        error = herd_error_content("TypeError", "keys must be a list of field names");
    }

    for (guint i = 0; error == NULL && i < names->len; i++) {
        if (field_by_name(names->pdata[i]) == F_UNKNOWN)
            error = key_error(names->pdata[i]);
    }
    if (error == NULL && names->len == 0) { /* null or []: every field but the buffers */
        for (int f = 0; f < F_COUNT; f++) {
            RecordField field = (RecordField)f;
            if (field != F_BUFFERS && field != F_RESULT_BUFFERS)
                g_array_append_val(p->fields, field);
        }
    } else if (error == NULL) {
        guint32 chosen = 1u << F_MSG_ID;
        RecordField first = F_MSG_ID;
        g_array_append_val(p->fields, first);
        for (guint i = 0; i < names->len; i++) {
            RecordField field = field_by_name(names->pdata[i]);
            if (field == F_BUFFERS)
                p->buffers = TRUE;
            else if (field == F_RESULT_BUFFERS)
                p->result_buffers = TRUE;
            else if (!(chosen & (1u << field)))
                g_array_append_val(p->fields, field);
            chosen |= 1u << field;
        }
    }
    g_ptr_array_unref(names);
    return error;
}

/* ------------------------------------------------------------------------------------ */
/* The in-memory backend: queries                                                         */
/* ------------------------------------------------------------------------------------ */

static HerdRecordState memory_result(HerdRecords *db, const char *msg_id, JsonNode **entry, HerdFrames *buffers)
{
    Record *rec = memory_lookup(memory(db), msg_id);
    if (rec == NULL)
        return HERD_RECORD_UNKNOWN;
    HerdRecordState state = record_state(rec);
    if (state == HERD_RECORD_FINISHED && entry) {
        *entry = record_result_entry(rec);
        if (buffers)
            append_stored_buffers(buffers, &rec->reply);
    }
    return state;
}

static gint compare_submitted(gconstpointer a, gconstpointer b)
{
    const Record *x = *(const Record *const *)a, *y = *(const Record *const *)b;
    return (x->submitted > y->submitted) - (x->submitted < y->submitted);
}

static JsonNode *memory_history_reply(HerdRecords *db)
{
    MemoryStore *s = memory(db);
    GPtrArray *submitted = g_ptr_array_sized_new(s->all.length);
    for (GList *l = s->all.head; l; l = l->next) {
        Record *rec = l->data;
        if (rec->submitted != HERD_RECORD_NO_DATE)
            g_ptr_array_add(submitted, rec);
    }
    g_ptr_array_sort(submitted, compare_submitted); /* stable: ties keep creation order */

    JsonArray *history = json_array_sized_new(submitted->len);
    for (guint i = 0; i < submitted->len; i++)
        json_array_add_string_element(history, ((Record *)submitted->pdata[i])->msg_id);
    g_ptr_array_unref(submitted);

    JsonObject *content;
    JsonNode *node = ok_content(&content);
    json_object_set_array_member(content, "history", history);
    return node;
}

static JsonNode *projected_record(const Record *rec, const Projection *p)
{
    JsonObject *object;
    JsonNode *node = new_object_node(&object);
    for (guint i = 0; i < p->fields->len; i++)
        set_field(object, rec, g_array_index(p->fields, RecordField, i));
    return node;
}

static JsonNode *memory_db_reply(HerdRecords *db, JsonObject *request, HerdFrames *buffers)
{
    MemoryStore *s = memory(db);
    GArray *conditions = g_array_new(FALSE, FALSE, sizeof(Condition));
    Projection p = { g_array_new(FALSE, FALSE, sizeof(RecordField)), FALSE, FALSE };
    JsonNode *error = compile_query(json_object_get_member(request, "query"), conditions);
    if (error == NULL)
        error = compile_projection(json_object_get_member(request, "keys"), &p);
    if (error) {
        g_array_unref(conditions);
        g_array_unref(p.fields);
        return error;
    }

    JsonArray *records = json_array_new();
    JsonArray *buffer_lens = p.buffers ? json_array_new() : NULL;
    JsonArray *result_buffer_lens = p.result_buffers ? json_array_new() : NULL;
    for (GList *l = s->all.head; l; l = l->next) {
        Record *rec = l->data;
        if (!record_matches(rec, conditions))
            continue;
        json_array_add_element(records, projected_record(rec, &p));
        /* the client re-slices the frames per record: request buffers, then result buffers */
        if (buffer_lens) {
            json_array_add_int_element(buffer_lens, stored_buffer_count(&rec->request));
            append_stored_buffers(buffers, &rec->request);
        }
        if (result_buffer_lens) {
            json_array_add_int_element(result_buffer_lens, stored_buffer_count(&rec->reply));
            append_stored_buffers(buffers, &rec->reply);
        }
    }
    g_array_unref(conditions);
    g_array_unref(p.fields);

    JsonObject *content;
    JsonNode *node = ok_content(&content);
    json_object_set_array_member(content, "records", records);
    if (buffer_lens)
        json_object_set_array_member(content, "buffer_lens", buffer_lens);
    else
        json_object_set_null_member(content, "buffer_lens");
    if (result_buffer_lens)
        json_object_set_array_member(content, "result_buffer_lens", result_buffer_lens);
    else
        json_object_set_null_member(content, "result_buffer_lens");
    return node;
}

static HerdResubmitSource *memory_resubmit_source(HerdRecords *db, const char *msg_id)
{
    Record *rec = memory_lookup(memory(db), msg_id);
    if (rec == NULL || rec->request.n == 0)
        return NULL; /* never requested (IOPub only): nothing to resubmit */
    JsonNode *header = json_from_text(stored_data(&rec->request, PART_HEADER),
                                      stored_size(&rec->request, PART_HEADER));
    if (!JSON_NODE_HOLDS_OBJECT(header)) {
        json_node_unref(header);
        return NULL;
    }
    HerdResubmitSource *src = g_new0(HerdResubmitSource, 1);
    src->msg_id = g_strdup(msg_id);
    src->header = header;
    herd_frames_init(&src->parts);
    stored_push_part(&src->parts, &rec->request, PART_CONTENT);
    append_stored_buffers(&src->parts, &rec->request);
    return src;
}

static void memory_drop(HerdRecords *db, const char *msg_id)
{
    MemoryStore *s = memory(db);
    Record *rec = memory_lookup(s, msg_id);
    if (rec)
        memory_remove(s, rec);
}

static void memory_drop_finished(HerdRecords *db, const char *engine_uuid)
{
    MemoryStore *s = memory(db);
    GList *l = s->all.head;
    while (l) {
        Record *rec = l->data;
        l = l->next;
        if (rec->completed == HERD_RECORD_NO_DATE)
            continue;
        if (engine_uuid == NULL || g_strcmp0(rec->engine_uuid, engine_uuid) == 0)
            memory_remove(s, rec);
    }
}

static guint memory_count(const HerdRecords *db)
{
    return g_hash_table_size(memory_const(db)->by_id);
}

static guint64 memory_buffer_bytes(const HerdRecords *db)
{
    return memory_const(db)->buffer_bytes;
}

static JsonNode *memory_get(HerdRecords *db, const char *msg_id)
{
    Record *rec = memory_lookup(memory(db), msg_id);
    return rec ? record_full_node(rec) : NULL;
}

static void memory_destroy(HerdRecords *db)
{
    MemoryStore *s = memory(db);
    while (s->all.head)
        memory_remove(s, s->all.head->data);
    g_hash_table_destroy(s->by_id);
    g_free(s);
}

static const HerdRecordsBackend memory_backend = {
    .name = "memory",
    .destroy = memory_destroy,
    .add_request = memory_add_request,
    .set_engine = memory_set_engine,
    .add_reply = memory_add_reply,
    .add_result_error = memory_add_result_error,
    .add_iopub = memory_add_iopub,
    .set_resubmitted = memory_set_resubmitted,
    .result = memory_result,
    .history_reply = memory_history_reply,
    .db_reply = memory_db_reply,
    .resubmit_source = memory_resubmit_source,
    .drop = memory_drop,
    .drop_finished = memory_drop_finished,
    .count = memory_count,
    .buffer_bytes = memory_buffer_bytes,
    .get = memory_get,
};

/* ------------------------------------------------------------------------------------ */
/* The "none" backend (--nodb): keeps nothing; the NULL operations make queries answer    */
/* the NoDB error                                                                         */
/* ------------------------------------------------------------------------------------ */

static void none_destroy(HerdRecords *db)
{
    g_free(db);
}

static const HerdRecordsBackend none_backend = {
    .name = "none",
    .destroy = none_destroy,
};

/* ------------------------------------------------------------------------------------ */
/* Public API                                                                             */
/* ------------------------------------------------------------------------------------ */

static HerdRecordLimits sane_limits(const HerdRecordLimits *limits)
{
    HerdRecordLimits l = limits ? *limits : HERD_RECORD_LIMITS_DEFAULT;
    if (!(l.cull_fraction >= 0.0 && l.cull_fraction <= 1.0)) /* also NaN */
        l.cull_fraction = 0.1;
    return l;
}

HerdRecords *herd_records_new(HerdDbKind kind, const HerdRecordLimits *limits)
{
    HerdRecords *db;
    if (kind == HERD_DB_NONE) {
        db = g_new0(HerdRecords, 1);
        db->backend = &none_backend;
    } else {
        MemoryStore *s = g_new0(MemoryStore, 1);
        s->by_id = g_hash_table_new(herd_str_hash, g_str_equal);
        g_queue_init(&s->all);
        g_queue_init(&s->finished);
        s->base.backend = &memory_backend;
        db = &s->base;
    }
    db->limits = sane_limits(limits);
    return db;
}

HerdRecords *herd_records_new_from_config(const HerdConfig *config)
{
    HerdRecordLimits limits = {
        .record_limit = config->record_limit > 0 ? (guint)config->record_limit : 0,
        .size_limit = config->size_limit > 0 ? (guint64)config->size_limit : 0,
        .cull_fraction = config->cull_fraction,
    };
    return herd_records_new(config->db, &limits);
}

void herd_records_free(HerdRecords *db)
{
    if (db)
        db->backend->destroy(db);
}

const char *herd_records_backend_name(const HerdRecords *db)
{
    return db->backend->name;
}

void herd_resubmit_source_free(gpointer source)
{
    HerdResubmitSource *src = source;
    if (src == NULL)
        return;
    g_free(src->msg_id);
    if (src->header)
        json_node_unref(src->header);
    herd_frames_clear(&src->parts);
    g_free(src);
}

/* ---- decoding the fields the caller did not pass ---- */

typedef struct Decoded {
    HerdMsgFields fields;
    JsonNode *parts[3]; /* parsed frames the field strings point into */
} Decoded;

static JsonObject *decode_part(const HerdFrames *msg, guint part, Decoded *d, guint slot)
{
    d->parts[slot] = herd_json_parse_object(herd_frame_bytes(msg, herd_wire(msg, part)), NULL);
    return d->parts[slot] ? json_node_get_object(d->parts[slot]) : NULL;
}

static void decoded_clear(Decoded *d)
{
    for (guint i = 0; i < G_N_ELEMENTS(d->parts); i++) {
        if (d->parts[i])
            json_node_unref(d->parts[i]);
    }
}

static void decode_request(const HerdFrames *msg, Decoded *d)
{
    JsonObject *header = decode_part(msg, HERD_WIRE_HEADER, d, 0);
    d->fields.msg_id = herd_json_str(header, "msg_id");
    d->fields.msg_type = herd_json_str(header, "msg_type");
    d->fields.session = herd_json_str(header, "session");
    d->fields.date = herd_json_str(header, "date");
}

static void decode_reply(const HerdFrames *msg, Decoded *d)
{
    JsonObject *header = decode_part(msg, HERD_WIRE_HEADER, d, 0);
    JsonObject *parent = decode_part(msg, HERD_WIRE_PARENT, d, 1);
    JsonObject *metadata = decode_part(msg, HERD_WIRE_METADATA, d, 2);
    d->fields.msg_id = herd_json_str(parent, "msg_id");
    d->fields.msg_type = herd_json_str(header, "msg_type");
    d->fields.session = herd_json_str(header, "session");
    d->fields.date = herd_json_str(header, "date");
    d->fields.started = herd_json_str(metadata, "started");
    d->fields.engine = herd_json_str(metadata, "engine");
}

static void decode_iopub(const HerdFrames *msg, Decoded *d)
{
    JsonObject *header = decode_part(msg, HERD_WIRE_HEADER, d, 0);
    JsonObject *parent = decode_part(msg, HERD_WIRE_PARENT, d, 1);
    d->fields.msg_id = herd_json_str(parent, "msg_id");
    d->fields.msg_type = herd_json_str(header, "msg_type");
}

static gboolean usable_id(const char *msg_id)
{
    return msg_id != NULL && *msg_id != '\0';
}

/* ---- updates ---- */

gboolean herd_records_add_request(HerdRecords *db, const HerdFrames *msg, const char *queue,
                                  const char *engine_uuid, const HerdMsgFields *fields)
{
    g_return_val_if_fail(db != NULL && msg != NULL, FALSE);
    if (db->backend->add_request == NULL || !herd_frames_is_wire(msg))
        return FALSE;
    Decoded d = { 0 };
    if (fields == NULL) {
        decode_request(msg, &d);
        fields = &d.fields;
    }
    gboolean ok = usable_id(fields->msg_id) && db->backend->add_request(db, msg, queue, engine_uuid, fields);
    decoded_clear(&d);
    return ok;
}

void herd_records_set_engine(HerdRecords *db, const char *msg_id, const char *engine_uuid)
{
    g_return_if_fail(db != NULL);
    if (db->backend->set_engine && usable_id(msg_id))
        db->backend->set_engine(db, msg_id, engine_uuid);
}

gboolean herd_records_add_reply(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields, gint64 now)
{
    g_return_val_if_fail(db != NULL && msg != NULL, FALSE);
    if (db->backend->add_reply == NULL || !herd_frames_is_wire(msg))
        return FALSE;
    Decoded d = { 0 };
    if (fields == NULL) {
        decode_reply(msg, &d);
        fields = &d.fields;
    }
    gboolean ok = usable_id(fields->msg_id) && db->backend->add_reply(db, msg, fields, now);
    decoded_clear(&d);
    return ok;
}

gboolean herd_records_add_result_error(HerdRecords *db, const char *msg_id, const char *engine_uuid,
                                       JsonNode *error_content, gint64 now)
{
    g_return_val_if_fail(db != NULL && error_content != NULL, FALSE);
    if (db->backend->add_result_error == NULL || !usable_id(msg_id))
        return FALSE;
    return db->backend->add_result_error(db, msg_id, engine_uuid, error_content, now);
}

gboolean herd_records_add_iopub(HerdRecords *db, const HerdFrames *msg, const HerdMsgFields *fields)
{
    g_return_val_if_fail(db != NULL && msg != NULL, FALSE);
    if (db->backend->add_iopub == NULL || !herd_frames_is_wire(msg))
        return FALSE;
    Decoded d = { 0 };
    if (fields == NULL) {
        decode_iopub(msg, &d);
        fields = &d.fields;
    }
    gboolean ok = db->backend->add_iopub(db, msg, fields);
    decoded_clear(&d);
    return ok;
}

void herd_records_set_resubmitted(HerdRecords *db, const char *old_msg_id, const char *new_msg_id)
{
    g_return_if_fail(db != NULL);
    if (db->backend->set_resubmitted && usable_id(old_msg_id))
        db->backend->set_resubmitted(db, old_msg_id, new_msg_id);
}

/* ---- queries ---- */

/* Pending in the hub's sense (§8.2): the view decides, else the store (a request without
 * its reply). */
static gboolean is_pending(HerdRecords *db, const HerdRecordsHubView *view, const char *msg_id)
{
    if (view && view->is_pending)
        return view->is_pending(msg_id, view->user_data);
    return db->backend->result && db->backend->result(db, msg_id, NULL, NULL) == HERD_RECORD_WAITING;
}

static void move_frames(HerdFrames *dst, HerdFrames *src)
{
    for (guint i = 0; i < src->n; i++)
        herd_frames_push_msg(dst, &src->frames[i]);
    src->n = 0;
    herd_frames_clear(src);
}

JsonNode *herd_records_result_reply(HerdRecords *db, JsonObject *request, const HerdRecordsHubView *view,
                                    HerdFrames *buffers)
{
    g_return_val_if_fail(db != NULL && request != NULL && buffers != NULL, NULL);
    GPtrArray *ids = g_ptr_array_new();
    if (!string_list_member(request, "msg_ids", ids)) {
        g_ptr_array_unref(ids);
        return herd_error_content("TypeError", "msg_ids must be a list of strings");
    }
    g_ptr_array_sort(ids, compare_strings); /* 7.1 answers in sorted, de-duplicated order */
    dedupe_strings(ids);
    gboolean status_only = herd_json_bool(request, "status_only", FALSE);

    JsonObject *content;
    JsonNode *reply = ok_content(&content);
    JsonArray *pending = json_array_new(), *completed = json_array_new();
    json_object_set_array_member(content, "pending", pending);
    json_object_set_array_member(content, "completed", completed);
    HerdFrames found;
    herd_frames_init(&found);
    JsonNode *error = NULL;

    for (guint i = 0; i < ids->len && error == NULL; i++) {
        const char *msg_id = ids->pdata[i];
        if (view && view->is_pending && view->is_pending(msg_id, view->user_data)) {
            json_array_add_string_element(pending, msg_id);
            continue;
        }
        if (db->backend->result == NULL) {
            error = nodb_error();
            break;
        }
        JsonNode *entry = NULL;
        switch (db->backend->result(db, msg_id, status_only ? NULL : &entry, &found)) {
        case HERD_RECORD_FINISHED:
            json_array_add_string_element(completed, msg_id);
            if (entry)
                json_object_set_member(content, msg_id, entry);
            break;
        case HERD_RECORD_WAITING:
        case HERD_RECORD_OUTPUT_ONLY: /* output seen, reply not yet: 7.1 says pending too */
            json_array_add_string_element(pending, msg_id);
            break;
        case HERD_RECORD_UNKNOWN: {
            char *message = g_strconcat("No such message: ", msg_id, NULL);
            error = key_error(message);
            g_free(message);
            break;
        }
        }
    }
    g_ptr_array_unref(ids);
    if (error) {
        herd_frames_clear(&found);
        json_node_unref(reply);
        return error;
    }
    move_frames(buffers, &found);
    return reply;
}

JsonNode *herd_records_history_reply(HerdRecords *db)
{
    g_return_val_if_fail(db != NULL, NULL);
    return db->backend->history_reply ? db->backend->history_reply(db) : nodb_error();
}

JsonNode *herd_records_db_reply(HerdRecords *db, JsonObject *request, HerdFrames *buffers)
{
    g_return_val_if_fail(db != NULL && request != NULL && buffers != NULL, NULL);
    return db->backend->db_reply ? db->backend->db_reply(db, request, buffers) : nodb_error();
}

/* Python's "%i" of an engine id as the client sent it. */
static char *engine_id_text(JsonNode *id)
{
    if (node_is_int(id))
        return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(id));
    return herd_json_to_string(id, NULL);
}

static JsonNode *purge_engines(HerdRecords *db, JsonObject *request, const HerdRecordsHubView *view)
{
    JsonNode *ids = json_object_get_member(request, "engine_ids");
    if (ids == NULL || JSON_NODE_HOLDS_NULL(ids))
        return NULL;
    if (!JSON_NODE_HOLDS_ARRAY(ids))
        return herd_error_content("TypeError", "engine_ids must be a list of engine ids");
    JsonArray *list = json_node_get_array(ids);
    for (guint i = 0; i < json_array_get_length(list); i++) {
        JsonNode *id = json_array_get_element(list, i);
        const char *uuid = NULL;
        if (node_is_int(id) && view && view->engine_uuid)
            uuid = view->engine_uuid(json_node_get_int(id), view->user_data);
        if (uuid == NULL) {
            char *text = engine_id_text(id);
            char *evalue = g_strdup_printf("No such engine: %s", text);
            JsonNode *error = herd_error_content("IndexError", evalue);
            g_free(evalue);
            g_free(text);
            return error;
        }
        if (db->backend->drop_finished)
            db->backend->drop_finished(db, uuid);
    }
    return NULL;
}

JsonNode *herd_records_purge(HerdRecords *db, JsonObject *request, const HerdRecordsHubView *view)
{
    g_return_val_if_fail(db != NULL && request != NULL, NULL);
    JsonNode *msg_ids = json_object_get_member(request, "msg_ids");
    if (node_is_string(msg_ids) && strcmp(json_node_get_string(msg_ids), "all") == 0) {
        if (db->backend->drop_finished)
            db->backend->drop_finished(db, NULL); /* engine_ids are ignored with "all" */
        JsonObject *content;
        return ok_content(&content);
    }

    GPtrArray *ids = g_ptr_array_new();
    if (!string_list_member(request, "msg_ids", ids)) {
        g_ptr_array_unref(ids);
        return herd_error_content("TypeError", "msg_ids must be \"all\" or a list of strings");
    }
    /* Nothing is dropped when one of them is still pending. */
    for (guint i = 0; i < ids->len; i++) {
        if (is_pending(db, view, ids->pdata[i])) {
            GString *evalue = g_string_new("msg pending: ");
            append_py_repr(evalue, ids->pdata[i]);
            JsonNode *error = herd_error_content("IndexError", evalue->str);
            g_string_free(evalue, TRUE);
            g_ptr_array_unref(ids);
            return error;
        }
    }
    for (guint i = 0; db->backend->drop && i < ids->len; i++)
        db->backend->drop(db, ids->pdata[i]);
    g_ptr_array_unref(ids);

    JsonNode *error = purge_engines(db, request, view);
    if (error)
        return error;
    JsonObject *content;
    return ok_content(&content);
}

JsonNode *herd_records_resubmit_lookup(HerdRecords *db, JsonObject *request, GPtrArray **sources)
{
    g_return_val_if_fail(db != NULL && request != NULL && sources != NULL, NULL);
    *sources = NULL;
    if (db->backend->resubmit_source == NULL)
        return nodb_error();
    GPtrArray *ids = g_ptr_array_new();
    if (!string_list_member(request, "msg_ids", ids)) {
        g_ptr_array_unref(ids);
        return herd_error_content("TypeError", "msg_ids must be a list of strings");
    }
    dedupe_strings(ids);

    GPtrArray *found = g_ptr_array_new_with_free_func(herd_resubmit_source_free);
    GString *missing = g_string_new(NULL);
    for (guint i = 0; i < ids->len; i++) {
        HerdResubmitSource *src = db->backend->resubmit_source(db, ids->pdata[i]);
        if (src) {
            g_ptr_array_add(found, src);
        } else {
            g_string_append(missing, missing->len ? ", " : "");
            append_py_repr(missing, ids->pdata[i]);
        }
    }
    g_ptr_array_unref(ids);

    JsonNode *error = NULL;
    if (missing->len > 0) {
        char *message = g_strdup_printf("No such msg(s): [%s]", missing->str);
        error = key_error(message);
        g_free(message);
        g_ptr_array_unref(found);
    } else {
        *sources = found;
    }
    g_string_free(missing, TRUE);
    return error;
}

/* ---- introspection ---- */

guint herd_records_count(const HerdRecords *db)
{
    return db->backend->count ? db->backend->count(db) : 0;
}

guint64 herd_records_buffer_bytes(const HerdRecords *db)
{
    return db->backend->buffer_bytes ? db->backend->buffer_bytes(db) : 0;
}

gboolean herd_records_contains(HerdRecords *db, const char *msg_id)
{
    return db->backend->result && usable_id(msg_id) &&
           db->backend->result(db, msg_id, NULL, NULL) != HERD_RECORD_UNKNOWN;
}

JsonNode *herd_records_get(HerdRecords *db, const char *msg_id)
{
    return db->backend->get && usable_id(msg_id) ? db->backend->get(db, msg_id) : NULL;
}
