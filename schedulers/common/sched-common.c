/* herd — helpers shared by the bundled scheduler plugins. */
#include "sched-common.h"

#include <herd/config.h>

/* ---- options ---------------------------------------------------------------------------- */

static gboolean key_is_allowed(const char *key, const char *const *allowed)
{
    if (g_strcmp0(key, "plugin") == 0)
        return TRUE;
    for (const char *const *a = allowed; a && *a; a++)
        if (g_strcmp0(key, *a) == 0)
            return TRUE;
    return FALSE;
}

gboolean sched_opt_check_keys(GKeyFile *conf, const char *group, const char *const *allowed,
                              GError **err)
{
    if (!conf || !group || !g_key_file_has_group(conf, group))
        return TRUE;
    g_auto(GStrv) keys = g_key_file_get_keys(conf, group, NULL, NULL);
    for (char **k = keys; k && *k; k++) {
        if (key_is_allowed(*k, allowed))
            continue;
        g_autofree char *choices =
            allowed && *allowed ? g_strjoinv(", ", (char **)allowed) : g_strdup("none");
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY,
                    "[%s]: unknown key '%s' (this scheduler's options: %s)", group, *k, choices);
        return FALSE;
    }
    return TRUE;
}

/* The raw value of a key, or NULL when the key (or the whole file) is absent. */
static char *opt_raw_value(GKeyFile *conf, const char *group, const char *key)
{
    if (!conf || !group || !g_key_file_has_key(conf, group, key, NULL))
        return NULL;
    char *v = g_key_file_get_value(conf, group, key, NULL);
    if (v)
        g_strstrip(v);
    return v;
}

gboolean sched_opt_uint(GKeyFile *conf, const char *group, const char *key, guint min, guint max,
                        guint def, guint *out, GError **err)
{
    g_autofree char *raw = opt_raw_value(conf, group, key);
    if (!raw) {
        *out = def;
        return TRUE;
    }
    guint64 v = 0;
    if (!g_ascii_string_to_unsigned(raw, 10, min, max, &v, NULL)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE,
                    "[%s] %s: bad value '%s' (expected an integer from %u to %u)", group, key, raw,
                    min, max);
        return FALSE;
    }
    *out = (guint)v;
    return TRUE;
}

/* ---- schemes ---------------------------------------------------------------------------- */

static const char *const scheme_names[] = {
    [SCHED_SCHEME_LEASTLOAD] = "leastload", [SCHED_SCHEME_LRU] = "lru",
    [SCHED_SCHEME_PLAINRANDOM] = "plainrandom", [SCHED_SCHEME_TWOBIN] = "twobin",
    [SCHED_SCHEME_WEIGHTED] = "weighted", [SCHED_SCHEME_PURE] = "pure",
};

const char *sched_scheme_name(SchedScheme scheme)
{
    if ((guint)scheme >= G_N_ELEMENTS(scheme_names))
        return "leastload";
    return scheme_names[scheme];
}

gboolean sched_opt_scheme(GKeyFile *conf, const char *group, SchedScheme *out, GError **err)
{
    g_autofree char *raw = opt_raw_value(conf, group, "scheme");
    if (!raw) {
        *out = SCHED_SCHEME_LEASTLOAD;
        return TRUE;
    }
    for (guint i = 0; i < G_N_ELEMENTS(scheme_names); i++) {
        if (g_strcmp0(raw, scheme_names[i]) == 0) {
            *out = (SchedScheme)i;
            return TRUE;
        }
    }
    g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE,
                "[%s] scheme: bad value '%s' (expected leastload, lru, plainrandom, twobin, "
                "weighted or pure)",
                group, raw);
    return FALSE;
}

static guint pick_leastload(const guint *loads, guint n)
{
    guint best = 0;
    for (guint i = 1; i < n; i++)
        if (loads[i] < loads[best])
            best = i;
    return best;
}

/* Index of the first cumulative weight reaching x (the weighted draw). */
static guint weighted_draw(const double *cumulative, guint n, double x)
{
    guint i = 0;
    while (i + 1 < n && cumulative[i] < x)
        i++;
    return i;
}

static guint pick_weighted(const guint *loads, guint n, GRand *rng)
{
    /* An idle engine weighs a million times more than one with a single task. */
    double stack_buf[64];
    double *cumulative = n <= G_N_ELEMENTS(stack_buf) ? stack_buf : g_new(double, n);
    double total = 0;
    for (guint i = 0; i < n; i++) {
        total += 1.0 / (1e-6 + loads[i]);
        cumulative[i] = total;
    }
    guint a = weighted_draw(cumulative, n, g_rand_double(rng) * total);
    guint b = weighted_draw(cumulative, n, g_rand_double(rng) * total);
    if (cumulative != stack_buf)
        g_free(cumulative);
    /* The larger weight is the smaller load; the first draw wins ties. */
    return loads[b] < loads[a] ? b : a;
}

guint sched_scheme_pick(SchedScheme scheme, const guint *loads, guint n, GRand *rng)
{
    g_return_val_if_fail(n > 0, 0);
    switch (scheme) {
    case SCHED_SCHEME_LRU:
    case SCHED_SCHEME_PURE:
        return 0;
    case SCHED_SCHEME_PLAINRANDOM:
        return (guint)g_rand_int_range(rng, 0, (gint32)n);
    case SCHED_SCHEME_TWOBIN: {
        guint a = (guint)g_rand_int_range(rng, 0, (gint32)n);
        guint b = (guint)g_rand_int_range(rng, 0, (gint32)n);
        return MIN(a, b);
    }
    case SCHED_SCHEME_WEIGHTED:
        return pick_weighted(loads, n, rng);
    case SCHED_SCHEME_LEASTLOAD:
    default:
        return pick_leastload(loads, n);
    }
}
