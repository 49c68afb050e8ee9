/* herd — the Jupyter "Session": HMAC-SHA256 signing and verification, replay refusal, ids,
 * and building the messages the controller sends itself.
 *
 * SHA-256 is OpenSSL's (libcrypto): it uses the CPU's SHA extensions where there are
 * some, about 3.5x faster per message than libsodium's portable SHA-256 on the machines
 * herd is measured on (docs/performance.md). The HMAC around it (RFC 2104) starts every
 * message from the inner and outer states keyed once: OpenSSL's EVP_MAC re-initialisation
 * allocates and frees a digest context per message, which cost more than the hashing of a
 * typical message. Those SHA256_* calls are deprecated in OpenSSL 3 but kept for exactly
 * this; they run the same assembly. Signatures are compared in constant time
 * (CRYPTO_memcmp); libsodium does the hex encoding and the wiping of key material.
 */
#define OPENSSL_API_COMPAT 10101 /* SHA256_CTX: a plain struct that can be copied */

#include "herd/wire.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sodium.h>
#include <string.h>
#include <unistd.h>

/* Same cap as jupyter_client's Session.digest_history_size. */
#define DIGEST_HISTORY_CAP 65536
/* The remembered digests: an open-addressing set of their first 64 bits, at most half
 * full, and a ring of the same keys in arrival order to forget the oldest. */
#define HISTORY_TABLE_SLOTS (2 * DIGEST_HISTORY_CAP) /* a power of two */

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
    /* SHA-256 states with the key's inner and outer pads absorbed: NULL when not signing.
     * Read-only after creation, so threads sharing a session need no lock. */
    struct Hmac *hmac;
    /* Digests of messages that verified (allocated at the first one). */
    guint64 *history_table; /* HISTORY_TABLE_SLOTS keys, 0 = empty slot */
    guint64 *history_ring;  /* DIGEST_HISTORY_CAP keys, oldest at history_oldest */
    guint history_oldest;
    guint history_count;
};

typedef struct Hmac {
    SHA256_CTX inner; /* after the 64-byte block key ^ 0x36 */
    SHA256_CTX outer; /* after the 64-byte block key ^ 0x5c */
} Hmac;

static void hmac_free(Hmac *h)
{
    if (!h)
        return;
    sodium_memzero(h, sizeof *h);
    g_free(h);
}

/* c := SHA-256 after the 64-byte block key ^ pad (RFC 2104's ipad 0x36 or opad 0x5c). */
static void hmac_absorb_pad(SHA256_CTX *c, const unsigned char key_block[SHA256_CBLOCK], unsigned char pad)
{
    unsigned char block[SHA256_CBLOCK];
    for (gsize i = 0; i < sizeof block; i++)
        block[i] = key_block[i] ^ pad;
    SHA256_Init(c);
    SHA256_Update(c, block, sizeof block);
    sodium_memzero(block, sizeof block);
}

static Hmac *hmac_new(const char *key, gsize key_len)
{
    unsigned char block[SHA256_CBLOCK] = { 0 };
    if (key_len > sizeof block)
        SHA256((const unsigned char *)key, key_len, block); /* long keys are hashed first */
    else
        memcpy(block, key, key_len);
    Hmac *h = g_new0(Hmac, 1);
    hmac_absorb_pad(&h->inner, block, 0x36);
    hmac_absorb_pad(&h->outer, block, 0x5c);
    sodium_memzero(block, sizeof block);
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
    Hmac *hmac = key_len > 0 ? hmac_new(key, key_len) : NULL;
    HerdSession *s = g_new0(HerdSession, 1);
    s->key = g_strdup(key ? key : "");
    s->key_len = key_len;
    s->hmac = hmac;
    s->id = herd_new_uuid();
    s->username = username && *username ? g_strdup(username) : default_username();
    s->pid = (long)getpid();
    header_parts_init(s);
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
    g_free(s->history_table);
    g_free(s->history_ring);
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

static void hmac_feed(SHA256_CTX *c, HerdBytes b)
{
    if (b.data == NULL)
        SHA256_Update(c, "{}", 2);
    else
        SHA256_Update(c, b.data, b.len);
}

/* Only called with signing on (s->hmac set). */
static void compute_digest(const HerdSession *s, HerdBytes header, HerdBytes parent, HerdBytes metadata,
                           HerdBytes content, unsigned char digest[DIGEST_LEN])
{
    const Hmac *h = s->hmac;
    SHA256_CTX c = h->inner;
    hmac_feed(&c, header);
    hmac_feed(&c, parent);
    hmac_feed(&c, metadata);
    hmac_feed(&c, content);
    unsigned char inner_digest[DIGEST_LEN];
    SHA256_Final(inner_digest, &c);
    c = h->outer;
    SHA256_Update(&c, inner_digest, sizeof inner_digest);
    SHA256_Final(digest, &c);
    sodium_memzero(&c, sizeof c); /* a state derived from the key */
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

/* A digest's key in the history: its first 64 bits (digests are uniformly random, so two
 * different messages share a key with probability 2^-64), never 0, which marks a free slot. */
static guint64 history_key(const unsigned char digest[DIGEST_LEN])
{
    guint64 k;
    memcpy(&k, digest, sizeof k);
    return k ? k : 1;
}

#define HISTORY_MASK (HISTORY_TABLE_SLOTS - 1)

/* The slot holding key k, or the free slot where the probe for it ends. */
static guint history_probe(const HerdSession *s, guint64 k)
{
    guint i = (guint)(k & HISTORY_MASK);
    while (s->history_table[i] != 0 && s->history_table[i] != k)
        i = (i + 1) & HISTORY_MASK;
    return i;
}

/* Linear probing's deletion: later keys of the same probe run move back into the hole, so
 * no probe ever stops early at it. */
static void history_delete(HerdSession *s, guint64 k)
{
    guint hole = history_probe(s, k);
    if (s->history_table[hole] != k)
        return;
    for (guint j = (hole + 1) & HISTORY_MASK; s->history_table[j] != 0; j = (j + 1) & HISTORY_MASK) {
        guint home = (guint)(s->history_table[j] & HISTORY_MASK);
        /* the key at j may move to the hole unless its home lies cyclically in (hole, j] */
        gboolean stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            s->history_table[hole] = s->history_table[j];
            hole = j;
        }
    }
    s->history_table[hole] = 0;
}

/* Remember the newest key; past the cap the oldest is forgotten. jupyter_client forgets a
 * random tenth at once; a sliding window forgets less and never pauses. */
static void history_remember(HerdSession *s, guint64 k, guint slot)
{
    if (s->history_count == DIGEST_HISTORY_CAP) {
        history_delete(s, s->history_ring[s->history_oldest]);
        s->history_oldest = (s->history_oldest + 1) % DIGEST_HISTORY_CAP;
        s->history_count--;
        slot = history_probe(s, k); /* the deletion may have moved keys */
    }
    s->history_table[slot] = k;
    s->history_ring[(s->history_oldest + s->history_count) % DIGEST_HISTORY_CAP] = k;
    s->history_count++;
}

/* The value of a lower-case hex digit, or -1 (Python compares the text: no upper case). */
static inline int lower_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* TRUE when the wire signature (any bytes) is the lower-case hex of digest. The received
 * text is public, so it is decoded plainly; the digests are compared in constant time. */
static gboolean signature_matches(const char *sig, gsize sig_len, const unsigned char digest[DIGEST_LEN])
{
    if (sig_len != DIGEST_HEX_LEN)
        return FALSE;
    unsigned char given[DIGEST_LEN];
    for (gsize i = 0; i < DIGEST_LEN; i++) {
        int hi = lower_hex_value(sig[2 * i]), lo = lower_hex_value(sig[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return FALSE;
        given[i] = (unsigned char)(hi << 4 | lo);
    }
    return CRYPTO_memcmp(given, digest, DIGEST_LEN) == 0; /* constant time */
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

    /* The signature and the history slot are cache misses (the frame was written by
     * libzmq's I/O thread, the table is 1 MB): fetch the signature while hashing, and the
     * slot while comparing the signature. */
    __builtin_prefetch(herd_frame_data(f, sig));
    unsigned char digest[DIGEST_LEN];
    compute_digest(s, herd_frame_bytes(f, herd_wire(f, HERD_WIRE_HEADER)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_PARENT)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_METADATA)),
                   herd_frame_bytes(f, herd_wire(f, HERD_WIRE_CONTENT)), digest);
    if (!s->history_table) {
        s->history_table = g_new0(guint64, HISTORY_TABLE_SLOTS);
        s->history_ring = g_new(guint64, DIGEST_HISTORY_CAP);
    }
    guint64 k = history_key(digest);
    __builtin_prefetch(&s->history_table[k & HISTORY_MASK]);
    if (!signature_matches(herd_frame_data(f, sig), sig_len, digest))
        return HERD_VERIFY_INVALID;

    /* Only digests that verified are remembered: a forged signature must not be able to
     * make a later genuine message look like a replay. */
    guint slot = history_probe(s, k);
    if (s->history_table[slot] == k)
        return HERD_VERIFY_REPLAYED;
    history_remember(s, k, slot);
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
