/* herd — the Jupyter "Session": HMAC-SHA256 signing and verification, replay refusal, ids,
 * and building the messages the controller sends itself.
 *
 * The HMAC is OpenSSL's (libcrypto): it uses the CPU's SHA extensions where there are
 * some, about 3.5x faster per message than libsodium's portable SHA-256 on the machines
 * herd is measured on (docs/performance.md). libsodium does the constant-time compare, the
 * hex encoding and the wiping of the key.
 */
#include "herd/wire.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <string.h>
#include <unistd.h>

/* Same cap as jupyter_client's Session.digest_history_size. */
#define DIGEST_HISTORY_CAP 65536
/* The remembered digests live in blocks of this many, allocated as the history grows and
 * never moved (the set points into them), used as one ring in arrival order. */
#define HISTORY_BLOCK 4096
#define HISTORY_SLOTS (DIGEST_HISTORY_CAP + HISTORY_BLOCK)

#define DIGEST_LEN 32 /* SHA-256 */
#define DIGEST_HEX_LEN (2 * DIGEST_LEN)        /* 64 */

struct HerdSession {
    char *key;
    gsize key_len;
    char *id;
    char *username;
    long pid;
    guint64 counter; /* msg_id counter, atomically incremented */
    /* The constant parts of every header, JSON-escaped: {"msg_id":"<these>N", and
     * ","username":...,"session":...,"date":" */
    char *header_msg_id_prefix;
    char *header_middle;
    /* An HMAC context keyed once: each digest re-initialises it without a key, which
     * keeps the key schedule. Signing takes a const session, so the context is behind a
     * pointer, and a lock keeps two threads sharing one session correct. */
    struct Hmac *hmac;
    /* Digests of messages that verified: a set of pointers into the ring of blocks, so
     * remembering one costs no allocation. */
    GHashTable *history;
    unsigned char *history_blocks[HISTORY_SLOTS / HISTORY_BLOCK];
    guint history_oldest; /* ring slot of the oldest remembered digest */
    guint history_count;
};

typedef struct Hmac {
    GMutex lock;
    EVP_MAC *mac;
    EVP_MAC_CTX *ctx;
} Hmac;

static void hmac_free(Hmac *h)
{
    if (!h)
        return;
    EVP_MAC_CTX_free(h->ctx);
    EVP_MAC_free(h->mac);
    g_mutex_clear(&h->lock);
    g_free(h);
}

static Hmac *hmac_new(const char *key, gsize key_len, GError **err)
{
    Hmac *h = g_new0(Hmac, 1);
    g_mutex_init(&h->lock);
    char digest_name[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
        OSSL_PARAM_construct_end(),
    };
    h->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    h->ctx = h->mac ? EVP_MAC_CTX_new(h->mac) : NULL;
    if (!h->ctx || !EVP_MAC_init(h->ctx, (const unsigned char *)key, key_len, params)) {
        g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_SCHEME, "OpenSSL has no usable HMAC-SHA256");
        hmac_free(h);
        return NULL;
    }
    return h;
}

static gboolean signing_on(const HerdSession *s)
{
    return s->key_len > 0;
}

static void ensure_sodium(void)
{
    if (sodium_init() < 0)
        g_error("libsodium failed to initialise");
}

/* HMAC digests are uniformly random, so their first bytes already make a good hash. */
static guint digest_hash(gconstpointer d)
{
    guint h;
    memcpy(&h, d, sizeof h);
    return h;
}

static gboolean digest_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, DIGEST_LEN) == 0;
}

char *herd_new_uuid(void)
{
    ensure_sodium();
    unsigned char raw[16];
    randombytes_buf(raw, sizeof raw);
    /* Python: 4 bytes as hex, '-', the other 12 bytes as hex. */
    char *out = g_malloc(8 + 1 + 24 + 1);
    sodium_bin2hex(out, 9, raw, 4);
    out[8] = '-';
    sodium_bin2hex(out + 9, 25, raw + 4, 12);
    return out;
}

static char *default_username(void)
{
    const char *user = g_getenv("USER");
    return g_strdup(user && *user ? user : "username");
}

/* The header members that never change, written once (see append_header). */
static void header_parts_init(HerdSession *s)
{
    GString *b = g_string_new(NULL);
    g_autofree char *msg_id_prefix = g_strdup_printf("%s_%ld_", s->id, s->pid);
    herd_json_append_escaped(b, msg_id_prefix, -1);
    s->header_msg_id_prefix = g_strdup(b->str);
    g_string_assign(b, "\",\"username\":\"");
    herd_json_append_escaped(b, s->username, -1);
    g_string_append(b, "\",\"session\":\"");
    herd_json_append_escaped(b, s->id, -1);
    g_string_append(b, "\",\"date\":\"");
    s->header_middle = g_string_free(b, FALSE);
}

HerdSession *herd_session_new(const char *key, const char *scheme, const char *username, GError **err)
{
    if (scheme != NULL && strcmp(scheme, "hmac-sha256") != 0) {
        g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_SCHEME,
                    "unsupported signature scheme \"%s\": only hmac-sha256 is supported", scheme);
        return NULL;
    }
    ensure_sodium();
    gsize key_len = key ? strlen(key) : 0;
    Hmac *hmac = NULL;
    if (key_len > 0 && !(hmac = hmac_new(key, key_len, err)))
        return NULL;
    HerdSession *s = g_new0(HerdSession, 1);
    s->key = g_strdup(key ? key : "");
    s->key_len = key_len;
    s->hmac = hmac;
    s->id = herd_new_uuid();
    s->username = username && *username ? g_strdup(username) : default_username();
    s->pid = (long)getpid();
    header_parts_init(s);
    s->history = g_hash_table_new(digest_hash, digest_equal);
    return s;
}

void herd_session_free(HerdSession *s)
{
    if (s == NULL)
        return;
    sodium_memzero(s->key, s->key_len);
    hmac_free(s->hmac);
    g_free(s->key);
    g_free(s->id);
    g_free(s->username);
    g_free(s->header_msg_id_prefix);
    g_free(s->header_middle);
    g_hash_table_destroy(s->history);
    for (guint i = 0; i < G_N_ELEMENTS(s->history_blocks); i++)
        g_free(s->history_blocks[i]);
    g_free(s);
}

const char *herd_session_id(const HerdSession *s)
{
    return s->id;
}

const char *herd_session_key(const HerdSession *s)
{
    return s->key;
}

guint herd_session_history_size(const HerdSession *s)
{
    return s->history_count;
}

static guint64 next_message_number(HerdSession *s)
{
    return __atomic_fetch_add(&s->counter, 1, __ATOMIC_RELAXED);
}

static char *msg_id_for(const HerdSession *s, guint64 n)
{
    return g_strdup_printf("%s_%ld_%" G_GUINT64_FORMAT, s->id, s->pid, n);
}

char *herd_session_msg_id(HerdSession *s)
{
    return msg_id_for(s, next_message_number(s));
}

/* ---- signing ---- */

static void hmac_feed(EVP_MAC_CTX *ctx, HerdBytes b)
{
    if (b.data == NULL)
        EVP_MAC_update(ctx, (const unsigned char *)"{}", 2);
    else
        EVP_MAC_update(ctx, (const unsigned char *)b.data, b.len);
}

/* Only called with signing on (s->hmac set). */
static void compute_digest(const HerdSession *s, HerdBytes header, HerdBytes parent, HerdBytes metadata,
                           HerdBytes content, unsigned char digest[DIGEST_LEN])
{
    Hmac *h = s->hmac;
    size_t len = 0;
    g_mutex_lock(&h->lock);
    gboolean ok = EVP_MAC_init(h->ctx, NULL, 0, NULL); /* same key, fresh message */
    hmac_feed(h->ctx, header);
    hmac_feed(h->ctx, parent);
    hmac_feed(h->ctx, metadata);
    hmac_feed(h->ctx, content);
    ok = ok && EVP_MAC_final(h->ctx, digest, &len, DIGEST_LEN) && len == DIGEST_LEN;
    g_mutex_unlock(&h->lock);
    if (!ok)
        g_error("OpenSSL HMAC-SHA256 failed"); /* a keyed context never fails in practice */
}

void herd_session_sign(const HerdSession *s, HerdBytes header, HerdBytes parent, HerdBytes metadata,
                       HerdBytes content, char out[65])
{
    if (!signing_on(s)) {
        out[0] = '\0';
        return;
    }
    unsigned char digest[DIGEST_LEN];
    compute_digest(s, header, parent, metadata, content, digest);
    sodium_bin2hex(out, DIGEST_HEX_LEN + 1, digest, DIGEST_LEN); /* lower-case, NUL-terminated */
}

static void sign_frames(const HerdSession *s, const HerdFrames *f, char out[65])
{
    herd_session_sign(s, herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)),
                      herd_frame_bytes(f, herd_wire(f, HERD_WIRE_PARENT)),
                      herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)),
                      herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), out);
}

/* ---- verification and replay refusal ---- */

static unsigned char *history_slot(HerdSession *s, guint slot)
{
    unsigned char **block = &s->history_blocks[slot / HISTORY_BLOCK];
    if (!*block)
        *block = g_malloc((gsize)HISTORY_BLOCK * DIGEST_LEN);
    return *block + (gsize)(slot % HISTORY_BLOCK) * DIGEST_LEN;
}

/* Past the cap, forget the oldest tenth (at least enough to get back under it).
 * jupyter_client forgets a random tenth; the oldest is what a replay is least likely to
 * reuse, and it keeps the ring contiguous. */
static void history_remember(HerdSession *s, const unsigned char digest[DIGEST_LEN])
{
    unsigned char *slot = history_slot(s, (s->history_oldest + s->history_count) % HISTORY_SLOTS);
    memcpy(slot, digest, DIGEST_LEN);
    g_hash_table_add(s->history, slot);
    s->history_count++;
    if (s->history_count <= DIGEST_HISTORY_CAP)
        return;
    guint to_drop = MAX(s->history_count / 10, s->history_count - DIGEST_HISTORY_CAP);
    for (; to_drop > 0; to_drop--) {
        g_hash_table_remove(s->history, history_slot(s, s->history_oldest));
        s->history_oldest = (s->history_oldest + 1) % HISTORY_SLOTS;
        s->history_count--;
    }
}

HerdVerify herd_session_verify(HerdSession *s, const HerdFrames *f)
{
    if (!herd_frames_is_wire(f))
        return HERD_VERIFY_MALFORMED;
    if (!signing_on(s))
        return HERD_VERIFY_OK;

    guint sig = herd_wire(f, HERD_WIRE_SIG);
    gsize sig_len = herd_frame_size(f, sig);
    if (sig_len == 0)
        return HERD_VERIFY_UNSIGNED;

    unsigned char digest[DIGEST_LEN];
    compute_digest(s, herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_PARENT)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), digest);
    char expected[DIGEST_HEX_LEN + 1];
    sodium_bin2hex(expected, sizeof expected, digest, DIGEST_LEN);

    /* The length is public (always 64); the bytes are compared in constant time. The
     * frame is compared as text, as Python does, so only lower-case hex matches. */
    if (sig_len != DIGEST_HEX_LEN || sodium_memcmp(herd_frame_data(f, sig), expected, DIGEST_HEX_LEN) != 0)
        return HERD_VERIFY_INVALID;

    /* Only digests that verified are remembered: a forged signature must not be able to
     * make a later genuine message look like a replay. */
    if (g_hash_table_contains(s->history, digest))
        return HERD_VERIFY_REPLAYED;
    history_remember(s, digest);
    return HERD_VERIFY_OK;
}

const char *herd_verify_str(HerdVerify v)
{
    switch (v) {
    case HERD_VERIFY_OK:
        return "ok";
    case HERD_VERIFY_MALFORMED:
        return "malformed message (no delimiter or too few frames)";
    case HERD_VERIFY_UNSIGNED:
        return "unsigned message";
    case HERD_VERIFY_INVALID:
        return "invalid signature";
    case HERD_VERIFY_REPLAYED:
        return "duplicate signature (replayed message)";
    }
    return "unknown verification result";
}

static void replace_frame(HerdFrames *f, guint i, const void *data, gsize len)
{
    zmq_msg_t *m = &f->frames[i];
    zmq_msg_close(m);
    if (zmq_msg_init_size(m, len) != 0)
        g_error("zmq_msg_init_size: %s", zmq_strerror(errno));
    if (len)
        memcpy(zmq_msg_data(m), data, len);
}

void herd_session_resign(const HerdSession *s, HerdFrames *f)
{
    g_return_if_fail(herd_frames_is_wire(f));
    char sig[DIGEST_HEX_LEN + 1];
    sign_frames(s, f, sig);
    replace_frame(f, herd_wire(f, HERD_WIRE_SIG), sig, strlen(sig));
}

/* ---- building ---- */

static void append_decimal(GString *out, guint64 n)
{
    char digits[20];
    gsize i = sizeof digits;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    g_string_append_len(out, digits + i, (gssize)(sizeof digits - i));
}

/* The header as members written one after the other, in the order Python emits them (not
 * required by peers, but eases comparing logs). Returns its message number. */
static guint64 append_header(HerdSession *s, GString *out, const char *msg_type, gint64 unix_usec)
{
    guint64 n = next_message_number(s);
    char date[HERD_ISO_LEN];
    herd_iso_format(unix_usec, date);
    g_string_append(out, "{\"msg_id\":\"");
    g_string_append(out, s->header_msg_id_prefix);
    append_decimal(out, n);
    g_string_append(out, "\",\"msg_type\":\"");
    herd_json_append_escaped(out, msg_type, -1);
    g_string_append(out, s->header_middle);
    g_string_append(out, date);
    g_string_append(out, "\",\"version\":\"" HERD_PROTOCOL_VERSION "\"}");
    return n;
}

void herd_session_append_header(HerdSession *s, GString *out, const char *msg_type, gint64 unix_usec)
{
    append_header(s, out, msg_type, unix_usec);
}

char *herd_session_header(HerdSession *s, const char *msg_type, char **msg_id_out)
{
    GString *out = g_string_sized_new(192);
    guint64 n = append_header(s, out, msg_type, g_get_real_time());
    if (msg_id_out)
        *msg_id_out = msg_id_for(s, n);
    return g_string_free(out, FALSE);
}

static HerdBytes object_or_empty(HerdBytes b)
{
    return b.data ? b : (HerdBytes){ "{}", 2 };
}

/* Append DELIM, signature and the four JSON parts; header, metadata and content are taken
 * (g_malloc'd), parent is copied. */
static void build_taking(HerdSession *s, HerdFrames *out, char *header, HerdBytes parent, char *metadata,
                         gsize metadata_len, char *content, gsize content_len)
{
    HerdBytes header_b = { header, strlen(header) };
    HerdBytes metadata_b = { metadata, metadata_len };
    HerdBytes content_b = { content, content_len };
    parent = object_or_empty(parent);

    char sig[DIGEST_HEX_LEN + 1];
    herd_session_sign(s, header_b, parent, metadata_b, content_b, sig);

    herd_frames_push(out, HERD_DELIM, HERD_DELIM_LEN);
    herd_frames_push(out, sig, strlen(sig));
    herd_frames_push_take(out, header, header_b.len);
    herd_frames_push(out, parent.data, parent.len);
    herd_frames_push_take(out, metadata, metadata_len);
    herd_frames_push_take(out, content, content_len);
}

void herd_session_build(HerdSession *s, HerdFrames *out, const char *msg_type, HerdBytes parent,
                        HerdBytes metadata, HerdBytes content, char **msg_id_out)
{
    metadata = object_or_empty(metadata);
    content = object_or_empty(content);
    char *header = herd_session_header(s, msg_type, msg_id_out);
    build_taking(s, out, header, parent, g_memdup2(metadata.data, metadata.len), metadata.len,
                 g_memdup2(content.data, content.len), content.len);
}

static char *node_to_string_or_empty(JsonNode *node, gsize *len)
{
    if (node == NULL) {
        *len = 2;
        return g_strdup("{}");
    }
    return herd_json_to_string(node, len);
}

void herd_session_build_node(HerdSession *s, HerdFrames *out, const char *msg_type, HerdBytes parent,
                             JsonNode *metadata, JsonNode *content, char **msg_id_out)
{
    gsize metadata_len, content_len;
    char *metadata_text = node_to_string_or_empty(metadata, &metadata_len);
    char *content_text = node_to_string_or_empty(content, &content_len);
    char *header = herd_session_header(s, msg_type, msg_id_out);
    build_taking(s, out, header, parent, metadata_text, metadata_len, content_text, content_len);
}
