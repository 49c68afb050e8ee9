/* herd — task-record updates applied on a thread of their own (see records-writer.h).
 *
 * Two locks. store_lock is held by whoever reads or changes the store: the writer thread
 * while it applies a batch, the loop thread while it answers a query. queue_lock guards
 * the operations handed over and not yet applied. An operation is taken off the queue
 * only by a thread holding store_lock, which applies it before letting go: so batches are
 * applied in the order they were handed over, whichever thread applies them.
 */
#define G_LOG_DOMAIN "herd"
#include "records-writer.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>

/* Hand over once this many updates are gathered, or when the oldest has waited this long
 * (checked at the end of each loop iteration; heartbeats keep the loop iterating). Fewer
 * hand-overs mean fewer wake-ups of the writer thread. */
#define HANDOVER_OPS 64
#define HANDOVER_AFTER_US 20000

typedef enum { OP_REQUEST, OP_ENGINE, OP_REPLY, OP_IOPUB } OpKind;

/* The strings an operation carries, in the order they are packed. */
enum { S_MSG_ID, S_MSG_TYPE, S_SESSION, S_DATE, S_STARTED, S_ENGINE, S_TARGET, N_STRINGS };

typedef struct Op {
    OpKind kind;
    gboolean has_fields;
    HerdFrames msg;       /* references to the message's frames */
    HerdMsgFields fields; /* strings in text */
    const char *queue;    /* a string constant or NULL */
    const char *target;   /* request: the destination engine; engine op: the engine */
    gint64 now;
    char text[];          /* the strings, each NUL-terminated */
} Op;

struct HerdRecordsWriter {
    HerdRecords *db;
    gboolean keeps_nothing; /* db=none: nothing to write, no thread */
    GMutex store_lock;
    GMutex queue_lock;
    GCond queue_cond;
    GPtrArray *queued; /* Op*, handed over (queue_lock) */
    gboolean quit;     /* queue_lock */
    GPtrArray *gathered; /* Op*, not handed over yet: the loop thread's alone */
    gint64 first_gathered_us;
    GThread *thread;
};

static Op *op_new(OpKind kind, const char *const strings[N_STRINGS])
{
    gsize lens[N_STRINGS], total = 0;
    for (guint i = 0; i < N_STRINGS; i++) {
        lens[i] = strings[i] ? strlen(strings[i]) + 1 : 0;
        total += lens[i];
    }
    Op *op = g_malloc0(sizeof(Op) + total);
    op->kind = kind;
    herd_frames_init(&op->msg);
    const char *copies[N_STRINGS];
    char *at = op->text;
    for (guint i = 0; i < N_STRINGS; i++) {
        copies[i] = strings[i] ? memcpy(at, strings[i], lens[i]) : NULL;
        at += lens[i];
    }
    op->fields = (HerdMsgFields){ .msg_id = copies[S_MSG_ID], .msg_type = copies[S_MSG_TYPE],
                                  .session = copies[S_SESSION], .date = copies[S_DATE],
                                  .started = copies[S_STARTED], .engine = copies[S_ENGINE] };
    op->target = copies[S_TARGET];
    return op;
}

static void op_free(gpointer p)
{
    Op *op = p;
    herd_frames_clear(&op->msg);
    g_free(op);
}

static void op_apply(HerdRecords *db, Op *op)
{
    const HerdMsgFields *fields = op->has_fields ? &op->fields : NULL;
    switch (op->kind) {
    case OP_REQUEST:
        herd_records_add_request(db, &op->msg, op->queue, op->target, fields);
        break;
    case OP_ENGINE:
        herd_records_set_engine(db, op->fields.msg_id, op->target);
        break;
    case OP_REPLY:
        herd_records_add_reply(db, &op->msg, fields, op->now);
        break;
    case OP_IOPUB:
        herd_records_add_iopub(db, &op->msg, NULL);
        break;
    }
}

/* With store_lock held: apply (and free) everything handed over so far. */
static void apply_queued(HerdRecordsWriter *w)
{
    g_mutex_lock(&w->queue_lock);
    GPtrArray *batch = w->queued;
    w->queued = g_ptr_array_new_with_free_func(op_free);
    g_mutex_unlock(&w->queue_lock);
    for (guint i = 0; i < batch->len; i++)
        op_apply(w->db, batch->pdata[i]);
    g_ptr_array_unref(batch); /* frees the operations, and their frame references */
}

static gpointer writer_thread(gpointer data)
{
    HerdRecordsWriter *w = data;
    for (;;) {
        g_mutex_lock(&w->queue_lock);
        while (w->queued->len == 0 && !w->quit)
            g_cond_wait(&w->queue_cond, &w->queue_lock);
        gboolean done = w->quit && w->queued->len == 0;
        g_mutex_unlock(&w->queue_lock);
        if (done)
            return NULL;
        g_mutex_lock(&w->store_lock);
        apply_queued(w);
        g_mutex_unlock(&w->store_lock);
    }
}

HerdRecordsWriter *herd_records_writer_new(HerdRecords *db)
{
    HerdRecordsWriter *w = g_new0(HerdRecordsWriter, 1);
    w->db = db;
    w->keeps_nothing = strcmp(herd_records_backend_name(db), "none") == 0;
    g_mutex_init(&w->store_lock);
    g_mutex_init(&w->queue_lock);
    g_cond_init(&w->queue_cond);
    w->queued = g_ptr_array_new_with_free_func(op_free);
    w->gathered = g_ptr_array_new_with_free_func(op_free);
    if (!w->keeps_nothing) {
        /* The thread starts with every signal blocked: they are the loop thread's to take
         * (herdd reads SIGINT/SIGTERM from a signalfd). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        w->thread = g_thread_new("herd-records", writer_thread, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return w;
}

static void hand_over(HerdRecordsWriter *w)
{
    if (w->gathered->len == 0)
        return;
    g_mutex_lock(&w->queue_lock);
    gboolean was_empty = w->queued->len == 0;
    g_ptr_array_extend_and_steal(w->queued, w->gathered);
    if (was_empty)
        g_cond_signal(&w->queue_cond); /* otherwise the thread has yet to take the queue */
    g_mutex_unlock(&w->queue_lock);
    w->gathered = g_ptr_array_new_with_free_func(op_free);
}

void herd_records_writer_free(HerdRecordsWriter *w)
{
    if (!w)
        return;
    hand_over(w);
    if (w->thread) {
        g_mutex_lock(&w->queue_lock);
        w->quit = TRUE;
        g_cond_signal(&w->queue_cond);
        g_mutex_unlock(&w->queue_lock);
        g_thread_join(w->thread); /* it leaves once the queue is empty */
    }
    g_ptr_array_unref(w->queued);
    g_ptr_array_unref(w->gathered);
    g_cond_clear(&w->queue_cond);
    g_mutex_clear(&w->queue_lock);
    g_mutex_clear(&w->store_lock);
    g_free(w);
}

static void gather(HerdRecordsWriter *w, Op *op)
{
    if (w->gathered->len == 0)
        w->first_gathered_us = g_get_monotonic_time();
    g_ptr_array_add(w->gathered, op);
}

static Op *op_with_fields(OpKind kind, const HerdFrames *msg, const HerdMsgFields *fields, const char *target)
{
    const char *strings[N_STRINGS] = { 0 };
    if (fields) {
        strings[S_MSG_ID] = fields->msg_id;
        strings[S_MSG_TYPE] = fields->msg_type;
        strings[S_SESSION] = fields->session;
        strings[S_DATE] = fields->date;
        strings[S_STARTED] = fields->started;
        strings[S_ENGINE] = fields->engine;
    }
    strings[S_TARGET] = target;
    Op *op = op_new(kind, strings);
    op->has_fields = fields != NULL;
    if (msg)
        herd_frames_copy(&op->msg, msg);
    return op;
}

void herd_records_writer_add_request(HerdRecordsWriter *w, const HerdFrames *msg, const char *queue,
                                     const char *engine_uuid, const HerdMsgFields *fields)
{
    if (w->keeps_nothing)
        return;
    Op *op = op_with_fields(OP_REQUEST, msg, fields, engine_uuid);
    op->queue = queue;
    gather(w, op);
}

void herd_records_writer_set_engine(HerdRecordsWriter *w, const char *msg_id, const char *engine_uuid)
{
    if (w->keeps_nothing)
        return;
    const HerdMsgFields fields = { .msg_id = msg_id };
    gather(w, op_with_fields(OP_ENGINE, NULL, &fields, engine_uuid));
}

void herd_records_writer_add_reply(HerdRecordsWriter *w, const HerdFrames *msg, const HerdMsgFields *fields,
                                   gint64 now)
{
    if (w->keeps_nothing)
        return;
    Op *op = op_with_fields(OP_REPLY, msg, fields, NULL);
    op->now = now;
    gather(w, op);
}

void herd_records_writer_add_iopub(HerdRecordsWriter *w, const HerdFrames *msg)
{
    if (w->keeps_nothing)
        return;
    gather(w, op_with_fields(OP_IOPUB, msg, NULL, NULL));
}

void herd_records_writer_flush(HerdRecordsWriter *w)
{
    if (w->gathered->len >= HANDOVER_OPS ||
        (w->gathered->len > 0 && g_get_monotonic_time() - w->first_gathered_us >= HANDOVER_AFTER_US))
        hand_over(w);
}

HerdRecords *herd_records_writer_lock(HerdRecordsWriter *w)
{
    hand_over(w);
    g_mutex_lock(&w->store_lock);
    apply_queued(w);
    return w->db;
}

void herd_records_writer_unlock(HerdRecordsWriter *w)
{
    g_mutex_unlock(&w->store_lock);
}
