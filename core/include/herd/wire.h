/* herd — ZeroMQ multipart frames and the Jupyter "Session" wire format.
 *
 * A message on the wire is:
 *   [routing ids...] "<IDS|MSG>" signature header parent_header metadata content [buffers...]
 * Relays keep frames untouched (signatures stay valid); only messages the controller
 * builds itself are serialised and signed here.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

G_BEGIN_DECLS

#define HERD_DELIM "<IDS|MSG>"
#define HERD_DELIM_LEN 9
#define HERD_PROTOCOL_VERSION "5.3"

/* Errors reported by the session and JSON helpers below. */
#define HERD_WIRE_ERROR (herd_wire_error_quark())
GQuark herd_wire_error_quark(void);
typedef enum {
    HERD_WIRE_ERROR_SCHEME,     /* signature scheme other than hmac-sha256 */
    HERD_WIRE_ERROR_UTF8,       /* JSON frame is not valid UTF-8 */
    HERD_WIRE_ERROR_JSON,       /* JSON syntax error or truncated JSON */
    HERD_WIRE_ERROR_NOT_OBJECT, /* valid JSON, but the top level is not an object */
} HerdWireError;

/* Frame offsets relative to the delimiter. */
enum {
    HERD_WIRE_SIG = 1,
    HERD_WIRE_HEADER = 2,
    HERD_WIRE_PARENT = 3,
    HERD_WIRE_METADATA = 4,
    HERD_WIRE_CONTENT = 5,
    HERD_WIRE_BUFFERS = 6,
};

/* An owned list of zmq frames. */
typedef struct HerdFrames {
    zmq_msg_t *frames;
    guint n;
    guint cap;
    gint delim; /* index of the first "<IDS|MSG>" frame, -1 when absent */
} HerdFrames;

typedef struct HerdBytes {
    const char *data; /* NULL means "{}" where a JSON object is expected */
    gsize len;
} HerdBytes;

#define HERD_BYTES_NULL ((HerdBytes){ NULL, 0 })
#define HERD_BYTES_STR(s) ((HerdBytes){ (s), strlen(s) })

void herd_frames_init(HerdFrames *f);
/* Close every frame; f stays usable (empty). */
void herd_frames_clear(HerdFrames *f);
/* Receive one whole multipart message (appended to f, which should be empty); finds the
 * delimiter. Returns 0, or -1 with errno set (EAGAIN with ZMQ_DONTWAIT); on failure f holds
 * what it held before (an empty f owns no memory then). */
int herd_frames_recv(void *sock, HerdFrames *f, int flags);
/* Handed each message of a batch; it may take the frames (copy *f, then herd_frames_init(f)):
 * what it leaves in f is cleared after it returns. */
typedef void (*HerdFramesFn)(HerdFrames *f, gpointer data);
/* The body of a socket callback (herd/loop.h): receive up to max messages without waiting,
 * handing each to fn. Returns TRUE if it stopped at max (more may wait), FALSE once a
 * receive failed (EAGAIN: nothing left). */
gboolean herd_frames_recv_batch(void *sock, guint max, HerdFramesFn fn, gpointer data);
/* Send every frame; f is left empty. Returns 0 or -1 with errno. */
int herd_frames_send(void *sock, HerdFrames *f);
/* The same, except that when the first frame is refused (nothing was sent: e.g. a ROUTER
 * with ZMQ_ROUTER_MANDATORY and an unknown peer) f is left as it was, to send again. */
int herd_frames_try_send(void *sock, HerdFrames *f);
void herd_frames_push(HerdFrames *f, const void *data, gsize len);         /* copy */
void herd_frames_push_take(HerdFrames *f, char *data, gsize len);          /* takes g_malloc'd data */
void herd_frames_push_msg(HerdFrames *f, zmq_msg_t *m);                    /* moves m */
void herd_frames_push_frame_copy(HerdFrames *f, const HerdFrames *src, guint i); /* zero-copy ref */
void herd_frames_insert(HerdFrames *f, guint at, const void *data, gsize len);
void herd_frames_remove(HerdFrames *f, guint at);
void herd_frames_swap(HerdFrames *f, guint a, guint b);
/* Deep structural copy (frames are reference-counted by zmq, so this is cheap).
 * dst is overwritten: pass an uninitialised or empty list, never one holding frames. */
void herd_frames_copy(HerdFrames *dst, const HerdFrames *src);
/* Re-scan for the delimiter (after inserting/removing frames). */
void herd_frames_find_delim(HerdFrames *f);

static inline const char *herd_frame_data(const HerdFrames *f, guint i)
{
    return (const char *)zmq_msg_data((zmq_msg_t *)&f->frames[i]);
}
static inline gsize herd_frame_size(const HerdFrames *f, guint i)
{
    return zmq_msg_size((zmq_msg_t *)&f->frames[i]);
}
static inline HerdBytes herd_frame_bytes(const HerdFrames *f, guint i)
{
    return (HerdBytes){ herd_frame_data(f, i), herd_frame_size(f, i) };
}
/* True when f has a delimiter followed by at least signature + 4 JSON frames. */
static inline bool herd_frames_is_wire(const HerdFrames *f)
{
    return f->delim >= 0 && f->n >= (guint)f->delim + HERD_WIRE_BUFFERS;
}
/* Frame index of a wire part, e.g. herd_wire(f, HERD_WIRE_HEADER). */
static inline guint herd_wire(const HerdFrames *f, guint part)
{
    return (guint)f->delim + part;
}

/* ---- Session: signing, verification, ids, message building ---- */

/* A session is used by one thread at a time (verify updates its replay history);
 * herd_session_msg_id alone may be called concurrently. */
typedef struct HerdSession HerdSession;

typedef enum {
    HERD_VERIFY_OK = 0,
    HERD_VERIFY_MALFORMED, /* no delimiter or too few frames */
    HERD_VERIFY_UNSIGNED,  /* empty signature while a key is set */
    HERD_VERIFY_INVALID,   /* HMAC mismatch */
    HERD_VERIFY_REPLAYED,  /* signature already seen by this session */
} HerdVerify;

/* key may be empty (signing off). scheme must be "hmac-sha256". username NULL = $USER. */
HerdSession *herd_session_new(const char *key, const char *scheme, const char *username, GError **err);
void herd_session_free(HerdSession *s);
const char *herd_session_id(const HerdSession *s);
const char *herd_session_key(const HerdSession *s);
/* Fresh unique msg_id "<session>_<pid>_<counter>"; caller frees. */
char *herd_session_msg_id(HerdSession *s);
/* Generate a random key / session id in the format Python uses (8hex-24hex); caller frees. */
char *herd_new_uuid(void);
/* Lower-case hex HMAC-SHA256 over the four JSON parts; out must hold 65 bytes. With an
 * empty key writes "". */
void herd_session_sign(const HerdSession *s, HerdBytes header, HerdBytes parent, HerdBytes metadata,
                       HerdBytes content, char out[65]);
/* Check the signature (constant time) and the replay history; remembers verified digests. */
HerdVerify herd_session_verify(HerdSession *s, const HerdFrames *f);
/* Number of digests currently remembered for replay refusal (capped at 65,536). */
guint herd_session_history_size(const HerdSession *s);
const char *herd_verify_str(HerdVerify v);
/* Recompute the signature frame of f in place (after rewriting JSON parts). */
void herd_session_resign(const HerdSession *s, HerdFrames *f);
/* Append DELIM, signature, a fresh header for msg_type, parent (raw bytes; NULL = {}),
 * metadata and content (serialised JSON; NULL = {}). Returns the new msg_id (caller frees,
 * or pass msg_id_out NULL). */
void herd_session_build(HerdSession *s, HerdFrames *out, const char *msg_type, HerdBytes parent,
                        HerdBytes metadata, HerdBytes content, char **msg_id_out);
/* Same, content given as a JsonNode (object). */
void herd_session_build_node(HerdSession *s, HerdFrames *out, const char *msg_type, HerdBytes parent,
                             JsonNode *metadata, JsonNode *content, char **msg_id_out);
/* A fresh header JSON for msg_type (serialised); caller frees. */
char *herd_session_header(HerdSession *s, const char *msg_type, char **msg_id_out);
/* Append the same header, dated unix_usec, to out: nothing is allocated but out's growth
 * (for peers that answer every request from reused buffers). */
void herd_session_append_header(HerdSession *s, GString *out, const char *msg_type, gint64 unix_usec);

/* ---- JSON and dates ---- */

/* Parse bytes that must hold a JSON object; NULL with err otherwise. Caller unrefs. */
JsonNode *herd_json_parse_object(HerdBytes b, GError **err);
/* Compact serialisation; caller frees. */
char *herd_json_to_string(JsonNode *node, gsize *len);
/* Append s (len bytes, or up to its NUL when len < 0; UTF-8) as the inside of a JSON
 * string literal: quote, backslash and control characters escaped, nothing else changed.
 * For messages written from templates instead of json-glib trees. */
void herd_json_append_escaped(GString *out, const char *s, gssize len);
/* Shortcuts for reading members; NULL / default when absent or of another type. */
const char *herd_json_str(JsonObject *o, const char *member);
gint64 herd_json_int(JsonObject *o, const char *member, gint64 dflt);
gboolean herd_json_bool(JsonObject *o, const char *member, gboolean dflt);
double herd_json_double(JsonObject *o, const char *member, double dflt); /* ints count too */
JsonArray *herd_json_array(JsonObject *o, const char *member);   /* borrowed */
JsonObject *herd_json_object(JsonObject *o, const char *member); /* borrowed */

/* Fast read of a few top-level members of a JSON object, for the relay path: no tree and
 * no allocation; nested values are skipped, not parsed. Returns FALSE when b is not a
 * well-formed object at the top level (fall back to herd_json_parse_object for the error
 * message). For a string, value/len span the characters between the quotes, undecoded;
 * `escaped` says whether they contain a backslash escape (decode with herd_json_field_dup).
 * For other kinds value/len span the raw JSON value. */
typedef enum {
    HERD_JSON_ABSENT = 0,
    HERD_JSON_STRING,
    HERD_JSON_TRUE,
    HERD_JSON_FALSE,
    HERD_JSON_NULL,
    HERD_JSON_NUMBER,
    HERD_JSON_OBJECT,
    HERD_JSON_ARRAY,
} HerdJsonKind;

typedef struct HerdJsonField {
    const char *name; /* in: the member to find */
    HerdJsonKind kind; /* out */
    const char *value; /* out */
    gsize len;         /* out */
    gboolean escaped;  /* out */
} HerdJsonField;

gboolean herd_json_scan(HerdBytes b, HerdJsonField *fields, guint n_fields);
/* Same, and counts the object's top-level members (found or not) into *n_members. */
gboolean herd_json_scan_count(HerdBytes b, HerdJsonField *fields, guint n_fields, guint *n_members);
/* The string member decoded into a new string; NULL unless it is a string. */
char *herd_json_field_dup(const HerdJsonField *f);
/* The string member NUL-terminated in buf when it has no escapes and fits, else NULL. */
const char *herd_json_field_str(const HerdJsonField *f, char *buf, gsize size);

/* ISO-8601 UTC as the Python peers write it: YYYY-MM-DDTHH:MM:SS[.ffffff]Z (microseconds
 * omitted when zero). buf must hold HERD_ISO_LEN bytes. */
#define HERD_ISO_LEN 32
void herd_iso_format(gint64 unix_usec, char buf[HERD_ISO_LEN]);
void herd_iso_now(char buf[HERD_ISO_LEN]);
/* Accepts what Python's date parser accepts (fractions of 1..6 digits, Z or +hh:mm). */
gboolean herd_iso_parse(const char *s, gint64 *unix_usec);

/* Error content (wrapped exception), engine_info {}: a JSON object node; caller unrefs. */
JsonNode *herd_error_content(const char *ename, const char *evalue);

G_END_DECLS
