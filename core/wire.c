/* herd — owned lists of ZeroMQ frames (HerdFrames).
 *
 * This is the relay hot path: a message is received into one growable array of
 * zmq_msg_t and later sent from it, so the only heap work per message is that array
 * (plus whatever libzmq allocates for large frame bodies). Frames are never copied
 * byte-wise when they are forwarded; zmq_msg_copy shares the body by reference count.
 *
 * zmq_msg_t values are moved with plain memory copies (realloc, memmove, swap). libzmq
 * does the same inside its own pipes: a zmq_msg_t holds no pointer to itself, so its
 * bytes stay valid wherever they are placed, as long as exactly one copy is kept alive.
 */
#include "herd/wire.h"

#include <errno.h>
#include <string.h>

/* Room for the usual message (a few routing ids, the delimiter, 5 wire frames and a
 * few buffers) without growing again. 15, not 16: 16 zmq_msg_t are 1024 bytes, a "large"
 * request for glibc's malloc, which then consolidates its fast bins on every message. */
#define FRAMES_INITIAL_CAP 15

void herd_frames_init(HerdFrames *f)
{
    f->frames = NULL;
    f->n = 0;
    f->cap = 0;
    f->delim = -1;
}

void herd_frames_clear(HerdFrames *f)
{
    for (guint i = 0; i < f->n; i++)
        zmq_msg_close(&f->frames[i]);
    g_free(f->frames);
    herd_frames_init(f);
}

static void frames_reserve(HerdFrames *f, guint extra)
{
    guint need = f->n + extra;
    if (need <= f->cap)
        return;
    guint cap = f->cap ? f->cap : FRAMES_INITIAL_CAP;
    while (cap < need)
        cap *= 2;
    f->frames = g_renew(zmq_msg_t, f->frames, cap);
    f->cap = cap;
}

static bool frame_is_delim(const zmq_msg_t *m)
{
    zmq_msg_t *mm = (zmq_msg_t *)m;
    return zmq_msg_size(mm) == HERD_DELIM_LEN && memcmp(zmq_msg_data(mm), HERD_DELIM, HERD_DELIM_LEN) == 0;
}

void herd_frames_find_delim(HerdFrames *f)
{
    f->delim = -1;
    for (guint i = 0; i < f->n; i++) {
        if (frame_is_delim(&f->frames[i])) {
            f->delim = (gint)i;
            return;
        }
    }
}

/* Close the frames from index `from` on (used to undo a partial receive). */
static void frames_truncate(HerdFrames *f, guint from)
{
    for (guint i = from; i < f->n; i++)
        zmq_msg_close(&f->frames[i]);
    f->n = from;
    if (f->delim >= (gint)from)
        f->delim = -1;
}

int herd_frames_recv(void *sock, HerdFrames *f, int flags)
{
    guint first = f->n;
    /* The first part goes to the stack: a receive that finds nothing (EAGAIN, the end of
     * every batch) then costs no allocation. Only it can block or fail with EAGAIN:
     * libzmq delivers a multipart message atomically, so the other parts are queued. */
    zmq_msg_t part;
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, sock, flags) < 0) {
        int saved = errno;
        zmq_msg_close(&part);
        errno = saved;
        return -1;
    }
    for (;;) {
        frames_reserve(f, 1);
        zmq_msg_t *m = &f->frames[f->n];
        memcpy(m, &part, sizeof part); /* a move: see the top of this file */
        f->n++;
        if (f->delim < 0 && frame_is_delim(m))
            f->delim = (gint)(f->n - 1);
        if (!zmq_msg_more(m))
            return 0;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, 0) < 0) {
            int saved = errno;
            zmq_msg_close(&part);
            frames_truncate(f, first);
            if (f->n == 0) { /* nothing kept: the caller owes nothing */
                g_free(f->frames);
                herd_frames_init(f);
            }
            errno = saved;
            return -1;
        }
    }
}

gboolean herd_frames_recv_batch(void *sock, guint max, HerdFramesFn fn, gpointer data)
{
    for (guint i = 0; i < max; i++) {
        HerdFrames f;
        herd_frames_init(&f);
        if (herd_frames_recv(sock, &f, ZMQ_DONTWAIT) < 0)
            return FALSE;
        fn(&f, data);
        herd_frames_clear(&f);
    }
    return TRUE;
}

int herd_frames_try_send(void *sock, HerdFrames *f)
{
    for (guint i = 0; i < f->n; i++) {
        int more = i + 1 < f->n ? ZMQ_SNDMORE : 0;
        if (zmq_msg_send(&f->frames[i], sock, more) < 0) {
            int saved = errno;
            if (i > 0)
                herd_frames_clear(f); /* frames already sent are empty; closing them is harmless */
            errno = saved;
            return -1;
        }
    }
    herd_frames_clear(f);
    return 0;
}

int herd_frames_send(void *sock, HerdFrames *f)
{
    int rc = herd_frames_try_send(sock, f);
    if (rc < 0) {
        int saved = errno;
        herd_frames_clear(f);
        errno = saved;
    }
    return rc;
}

/* Reserve one slot at the end and return it, uninitialised. */
static zmq_msg_t *frames_append_slot(HerdFrames *f)
{
    frames_reserve(f, 1);
    return &f->frames[f->n];
}

/* Account for the frame just written into the slot at the end. */
static void frames_commit_slot(HerdFrames *f)
{
    if (f->delim < 0 && frame_is_delim(&f->frames[f->n]))
        f->delim = (gint)f->n;
    f->n++;
}

static void msg_init_copy_of(zmq_msg_t *m, const void *data, gsize len)
{
    /* zmq_msg_init_size only fails when out of memory, which GLib treats as fatal too. */
    if (zmq_msg_init_size(m, len) != 0)
        g_error("zmq_msg_init_size(%" G_GSIZE_FORMAT "): %s", len, zmq_strerror(errno));
    if (len)
        memcpy(zmq_msg_data(m), data, len);
}

void herd_frames_push(HerdFrames *f, const void *data, gsize len)
{
    msg_init_copy_of(frames_append_slot(f), data, len);
    frames_commit_slot(f);
}

static void free_with_g_free(void *data, void *hint)
{
    (void)hint;
    g_free(data);
}

void herd_frames_push_take(HerdFrames *f, char *data, gsize len)
{
    zmq_msg_t *m = frames_append_slot(f);
    if (len == 0 || data == NULL) {
        g_free(data);
        zmq_msg_init(m);
    } else if (zmq_msg_init_data(m, data, len, free_with_g_free, NULL) != 0) {
        g_error("zmq_msg_init_data: %s", zmq_strerror(errno));
    }
    frames_commit_slot(f);
}

void herd_frames_push_msg(HerdFrames *f, zmq_msg_t *src)
{
    zmq_msg_t *m = frames_append_slot(f);
    zmq_msg_init(m);
    zmq_msg_move(m, src);
    frames_commit_slot(f);
}

void herd_frames_push_frame_copy(HerdFrames *f, const HerdFrames *src, guint i)
{
    g_return_if_fail(i < src->n);
    /* Grow first: src may be f itself, and growing moves its array. */
    zmq_msg_t *m = frames_append_slot(f);
    zmq_msg_init(m);
    zmq_msg_copy(m, (zmq_msg_t *)&src->frames[i]);
    frames_commit_slot(f);
}

void herd_frames_insert(HerdFrames *f, guint at, const void *data, gsize len)
{
    g_return_if_fail(at <= f->n);
    frames_reserve(f, 1);
    memmove(&f->frames[at + 1], &f->frames[at], (f->n - at) * sizeof(zmq_msg_t));
    msg_init_copy_of(&f->frames[at], data, len);
    f->n++;
    if (f->delim >= (gint)at)
        f->delim++;
    if ((f->delim < 0 || (gint)at < f->delim) && frame_is_delim(&f->frames[at]))
        f->delim = (gint)at;
}

void herd_frames_remove(HerdFrames *f, guint at)
{
    g_return_if_fail(at < f->n);
    zmq_msg_close(&f->frames[at]);
    memmove(&f->frames[at], &f->frames[at + 1], (f->n - at - 1) * sizeof(zmq_msg_t));
    f->n--;
    if (f->delim == (gint)at)
        herd_frames_find_delim(f);
    else if (f->delim > (gint)at)
        f->delim--;
}

void herd_frames_swap(HerdFrames *f, guint a, guint b)
{
    g_return_if_fail(a < f->n && b < f->n);
    if (a == b)
        return;
    zmq_msg_t tmp;
    memcpy(&tmp, &f->frames[a], sizeof tmp);
    memcpy(&f->frames[a], &f->frames[b], sizeof tmp);
    memcpy(&f->frames[b], &tmp, sizeof tmp);
    herd_frames_find_delim(f);
}

void herd_frames_copy(HerdFrames *dst, const HerdFrames *src)
{
    herd_frames_init(dst);
    frames_reserve(dst, src->n);
    for (guint i = 0; i < src->n; i++) {
        zmq_msg_init(&dst->frames[i]);
        zmq_msg_copy(&dst->frames[i], (zmq_msg_t *)&src->frames[i]);
    }
    dst->n = src->n;
    dst->delim = src->delim;
}
