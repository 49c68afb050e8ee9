/* herd — herd_str_hash (see herd/hash.h). */
#include "herd/hash.h"

#include <string.h>

/* The 64-bit finaliser of MurmurHash3: every input bit reaches every output bit. */
static guint64 mix64(guint64 h)
{
    h ^= h >> 33;
    h *= G_GUINT64_CONSTANT(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= G_GUINT64_CONSTANT(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

guint herd_str_hash(gconstpointer key)
{
    const char *p = key;
    gsize len = strlen(p);
    guint64 h = G_GUINT64_CONSTANT(0x9e3779b97f4a7c15) ^ len;
    for (; len >= 8; p += 8, len -= 8) {
        guint64 word;
        memcpy(&word, p, 8);
        h = (h ^ word) * G_GUINT64_CONSTANT(0x9e3779b97f4a7c15);
        h ^= h >> 29;
    }
    guint64 tail = 0;
    memcpy(&tail, p, len);
    return (guint)mix64(h ^ tail);
}
