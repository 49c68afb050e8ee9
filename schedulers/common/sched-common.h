/* herd — helpers shared by the bundled scheduler plugins (not installed).
 *
 * Option parsing for a plugin's [scheduler.<channel>] group, and the engine-choice schemes
 * of ipyparallel's task scheduler. Linked statically into each scheduler module.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* ---- options ---------------------------------------------------------------------------- */

/* Fail (HERD_CONFIG_ERROR_UNKNOWN_KEY) if `group` of `conf` holds a key other than "plugin"
 * and those in `allowed` (NULL-terminated). A missing group or NULL conf is fine. */
gboolean sched_opt_check_keys(GKeyFile *conf, const char *group, const char *const *allowed,
                              GError **err);

/* Read an unsigned integer option in [min, max]; `*out` = def when the key is absent.
 * A bad value fails with HERD_CONFIG_ERROR_BAD_VALUE naming group, key and value. */
gboolean sched_opt_uint(GKeyFile *conf, const char *group, const char *key, guint min, guint max,
                        guint def, guint *out, GError **err);

/* ---- schemes ---------------------------------------------------------------------------- */

typedef enum {
    SCHED_SCHEME_LEASTLOAD = 0, /* first candidate with the minimum load */
    SCHED_SCHEME_LRU,           /* the first candidate (least recently assigned) */
    SCHED_SCHEME_PLAINRANDOM,   /* uniformly random */
    SCHED_SCHEME_TWOBIN,        /* two random draws, keep the less recently used */
    SCHED_SCHEME_WEIGHTED,      /* two draws weighted by 1/load, keep the less loaded */
    SCHED_SCHEME_PURE,          /* ipcontroller's ZMQ relay: plain rotation, no hwm (the
                                   plugins force hwm = 0); clients told "pure" avoid
                                   dependencies */
} SchedScheme;

const char *sched_scheme_name(SchedScheme scheme);

/* Read option `scheme` (default leastload); a bad value fails naming it and the choices. */
gboolean sched_opt_scheme(GKeyFile *conf, const char *group, SchedScheme *out, GError **err);

/* Pick an index in [0, n) given the candidates' loads in LRU order (least recently
 * assigned first). n must be > 0. rng is used by the random schemes only. */
guint sched_scheme_pick(SchedScheme scheme, const guint *loads, guint n, GRand *rng);

G_END_DECLS
