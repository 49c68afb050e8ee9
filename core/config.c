/* herd — controller configuration: defaults, ipcontroller_config.py/.json, herd.conf, flags.
 *
 * Every source is turned into a "layer": a GKeyFile holding only the keys that source set,
 * already validated and normalised (booleans as true/false, log levels as numbers...).
 * The layers are merged lowest precedence first into cfg->keyfile, then the typed
 * HerdConfig is read from the merged file. Validating each layer as it is built lets every
 * error name the exact flag, file, line or key the bad value came from.
 */
#include "herd/config.h"

#include "herd-build-config.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

G_DEFINE_QUARK(herd-config-error-quark, herd_config_error)

#define GROUP_CONTROLLER "controller"
#define GROUP_TRANSPORT "transport"
#define GROUP_SCHEDULER "scheduler"
#define GROUP_TASK_OPTIONS "scheduler.task"

/* ------------------------------------------------------------------------------------ */
/* Value kinds and the table of keys herd itself understands                             */
/* ------------------------------------------------------------------------------------ */

typedef enum {
    VALUE_STRING,       /* any text, may be empty */
    VALUE_CLUSTER_ID,   /* text that can sit in a file name: no '/' */
    VALUE_NAME,         /* plugin or scheme name: [A-Za-z0-9_.-]+ */
    VALUE_POSITIVE_INT, /* 1 .. G_MAXINT */
    VALUE_NONNEG_INT,   /* 0 .. G_MAXINT */
    VALUE_SIZE,         /* bytes, 1 .. G_MAXINT64 */
    VALUE_SECONDS,      /* finite double >= 0 */
    VALUE_FRACTION,     /* double in (0, 1] */
    VALUE_BOOL,
    VALUE_PORTS,
    VALUE_LOG_LEVEL,
    VALUE_DB,
    VALUE_SIGNATURE_SCHEME,
    VALUE_PATH_LIST, /* GKeyFile list, ';'-separated */
} ValueKind;

typedef struct {
    const char *group;
    const char *key;
    ValueKind kind;
    const char *default_value; /* NULL: computed at load time, or unset */
} KeySpec;

/* The groups and keys herd.conf may contain (plugin groups aside). Keep docs/configuration.md
 * in step with this table. */
static const KeySpec known_keys[] = {
    {GROUP_CONTROLLER, "ip", VALUE_STRING, "127.0.0.1"},
    {GROUP_CONTROLLER, "client_ip", VALUE_STRING, NULL},
    {GROUP_CONTROLLER, "engine_ip", VALUE_STRING, NULL},
    {GROUP_CONTROLLER, "location", VALUE_STRING, NULL},
    {GROUP_CONTROLLER, "cluster_id", VALUE_CLUSTER_ID, ""},
    {GROUP_CONTROLLER, "ports", VALUE_PORTS, ""},
    {GROUP_CONTROLLER, "ping", VALUE_POSITIVE_INT, "3000"},
    {GROUP_CONTROLLER, "heartbeat_misses", VALUE_POSITIVE_INT, "10"},
    {GROUP_CONTROLLER, "registration_timeout", VALUE_SECONDS, "0"},
    {GROUP_CONTROLLER, "reuse", VALUE_BOOL, "false"},
    {GROUP_CONTROLLER, "db", VALUE_DB, "dict"},
    {GROUP_CONTROLLER, "record_limit", VALUE_POSITIVE_INT, "1024"},
    {GROUP_CONTROLLER, "size_limit", VALUE_SIZE, "1073741824"},
    {GROUP_CONTROLLER, "cull_fraction", VALUE_FRACTION, "0.1"},
    {GROUP_CONTROLLER, "key", VALUE_STRING, NULL},
    {GROUP_CONTROLLER, "signature_scheme", VALUE_SIGNATURE_SCHEME, "hmac-sha256"},
    {GROUP_CONTROLLER, "username", VALUE_STRING, NULL},
    {GROUP_CONTROLLER, "log_level", VALUE_LOG_LEVEL, "20"},
    {GROUP_CONTROLLER, "log_to_file", VALUE_BOOL, "false"},
    {GROUP_CONTROLLER, "plugin_path", VALUE_PATH_LIST, NULL},
    {GROUP_CONTROLLER, "ssh", VALUE_STRING, ""},
    {GROUP_CONTROLLER, "engine_ssh", VALUE_STRING, ""},
    {GROUP_TRANSPORT, "client", VALUE_NAME, "tcp"},
    {GROUP_TRANSPORT, "engine", VALUE_NAME, "tcp"},
    {GROUP_SCHEDULER, "mux", VALUE_NAME, "mux"},
    {GROUP_SCHEDULER, "task", VALUE_NAME, "task"},
    {GROUP_SCHEDULER, "broadcast", VALUE_NAME, "broadcast"},
};

/* Task-scheduler options that ipcontroller flags set. The plugin owns their meaning and
 * defaults; herd only checks the value's shape so a typo fails at the flag. */
static const KeySpec task_option_keys[] = {
    {GROUP_TASK_OPTIONS, "scheme", VALUE_NAME, NULL},
    {GROUP_TASK_OPTIONS, "hwm", VALUE_NONNEG_INT, NULL},
};

static const KeySpec *find_key_spec(const char *group, const char *key)
{
    for (gsize i = 0; i < G_N_ELEMENTS(known_keys); i++)
        if (g_str_equal(known_keys[i].group, group) && g_str_equal(known_keys[i].key, key))
            return &known_keys[i];
    for (gsize i = 0; i < G_N_ELEMENTS(task_option_keys); i++)
        if (g_str_equal(task_option_keys[i].group, group) && g_str_equal(task_option_keys[i].key, key))
            return &task_option_keys[i];
    return NULL;
}

static gboolean is_core_group(const char *group)
{
    return g_str_equal(group, GROUP_CONTROLLER) || g_str_equal(group, GROUP_TRANSPORT) ||
           g_str_equal(group, GROUP_SCHEDULER);
}

/* [transport.<name>] and [scheduler.<name>] belong to plugins, which validate them. */
static gboolean is_plugin_group(const char *group)
{
    return (g_str_has_prefix(group, GROUP_TRANSPORT ".") && group[strlen(GROUP_TRANSPORT ".")] != '\0') ||
           (g_str_has_prefix(group, GROUP_SCHEDULER ".") && group[strlen(GROUP_SCHEDULER ".")] != '\0');
}

/* ------------------------------------------------------------------------------------ */
/* Public value parsers                                                                 */
/* ------------------------------------------------------------------------------------ */

int herd_config_parse_log_level(const char *s)
{
    static const struct {
        const char *name;
        int level;
    } names[] = {
        {"DEBUG", 10}, {"INFO", 20}, {"WARN", 30}, {"WARNING", 30}, {"ERROR", 40}, {"CRITICAL", 50},
    };
    if (s == NULL)
        return -1;
    for (gsize i = 0; i < G_N_ELEMENTS(names); i++)
        if (g_ascii_strcasecmp(s, names[i].name) == 0)
            return names[i].level;
    /* Python's logging accepts exactly these numbers from the ipcontroller command line. */
    guint64 n;
    if (g_ascii_string_to_unsigned(s, 10, 0, 50, &n, NULL) && n % 10 == 0)
        return (int)n;
    return -1;
}

static gboolean parse_port_number(const char *text, int *out)
{
    g_autofree char *copy = g_strstrip(g_strdup(text));
    guint64 n;
    if (!g_ascii_string_to_unsigned(copy, 10, 1, 65535, &n, NULL))
        return FALSE;
    *out = (int)n;
    return TRUE;
}

gboolean herd_config_parse_ports(const char *s, GArray *out, GError **err)
{
    g_return_val_if_fail(s != NULL && out != NULL, FALSE);
    /* g_strsplit("") yields no items; an empty list is spelled as an empty key, not here */
    g_auto(GStrv) items = g_strsplit(*s ? s : ",", ",", -1);
    GArray *parsed = g_array_new(FALSE, FALSE, sizeof(int));
    for (char **item = items; *item != NULL; item++) {
        g_auto(GStrv) bounds = g_strsplit(*item, "-", 2);
        int first = 0, last = 0;
        gboolean ok = bounds[0] != NULL && parse_port_number(bounds[0], &first);
        if (ok && bounds[1] != NULL)
            ok = parse_port_number(bounds[1], &last) && last >= first;
        else
            last = first;
        if (!ok) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE,
                        "invalid port list '%s' at '%s': expected ports 1-65535 as N, N-M or "
                        "a comma-separated list of those",
                        s, *item);
            g_array_unref(parsed);
            return FALSE;
        }
        for (int port = first; port <= last; port++)
            g_array_append_val(parsed, port);
    }
    g_array_append_vals(out, parsed->data, parsed->len);
    g_array_unref(parsed);
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* Validation and normalisation of one value                                            */
/* ------------------------------------------------------------------------------------ */

static gboolean parse_bool_text(const char *s, gboolean *out)
{
    static const char *const truthy[] = {"true", "yes", "on", "1"};
    static const char *const falsy[] = {"false", "no", "off", "0"};
    for (gsize i = 0; i < G_N_ELEMENTS(truthy); i++) {
        if (g_ascii_strcasecmp(s, truthy[i]) == 0) {
            *out = TRUE;
            return TRUE;
        }
        if (g_ascii_strcasecmp(s, falsy[i]) == 0) {
            *out = FALSE;
            return TRUE;
        }
    }
    return FALSE;
}

static gboolean parse_double_text(const char *s, double *out)
{
    char *end = NULL;
    if (*s == '\0' || g_ascii_isspace(*s))
        return FALSE;
    double d = g_ascii_strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(d))
        return FALSE;
    *out = d;
    return TRUE;
}

static gboolean is_name_text(const char *s)
{
    if (*s == '\0')
        return FALSE;
    for (const char *p = s; *p; p++)
        if (!g_ascii_isalnum(*p) && *p != '_' && *p != '-' && *p != '.')
            return FALSE;
    return TRUE;
}

/* Returns the normalised text of raw for kind, or NULL with *why describing what was
 * expected. */
static char *normalize_value(ValueKind kind, const char *raw, const char **why)
{
    gint64 n;
    double d;
    gboolean b;
    switch (kind) {
    case VALUE_STRING:
    case VALUE_PATH_LIST:
        return g_strdup(raw);
    case VALUE_CLUSTER_ID:
        *why = "a cluster id may not contain '/'";
        return strchr(raw, '/') ? NULL : g_strdup(raw);
    case VALUE_NAME:
        *why = "expected a name made of letters, digits, '_', '-' or '.'";
        return is_name_text(raw) ? g_strdup(raw) : NULL;
    case VALUE_POSITIVE_INT:
        *why = "expected a positive integer";
        return g_ascii_string_to_signed(raw, 10, 1, G_MAXINT, &n, NULL) ? g_strdup_printf("%" G_GINT64_FORMAT, n)
                                                                         : NULL;
    case VALUE_NONNEG_INT:
        *why = "expected an integer >= 0";
        return g_ascii_string_to_signed(raw, 10, 0, G_MAXINT, &n, NULL) ? g_strdup_printf("%" G_GINT64_FORMAT, n)
                                                                         : NULL;
    case VALUE_SIZE:
        *why = "expected a positive number of bytes";
        return g_ascii_string_to_signed(raw, 10, 1, G_MAXINT64, &n, NULL)
                   ? g_strdup_printf("%" G_GINT64_FORMAT, n)
                   : NULL;
    case VALUE_SECONDS:
        *why = "expected a number of seconds >= 0";
        return parse_double_text(raw, &d) && d >= 0 ? g_strdup(raw) : NULL;
    case VALUE_FRACTION:
        *why = "expected a number greater than 0 and at most 1";
        return parse_double_text(raw, &d) && d > 0 && d <= 1 ? g_strdup(raw) : NULL;
    case VALUE_BOOL:
        *why = "expected true or false";
        return parse_bool_text(raw, &b) ? g_strdup(b ? "true" : "false") : NULL;
    case VALUE_PORTS: {
        *why = "expected ports 1-65535 as N, N-M or a comma-separated list of those";
        if (*raw == '\0')
            return g_strdup("");
        g_autoptr(GArray) ports = g_array_new(FALSE, FALSE, sizeof(int));
        return herd_config_parse_ports(raw, ports, NULL) ? g_strdup(raw) : NULL;
    }
    case VALUE_LOG_LEVEL: {
        *why = "expected 0, 10, 20, 30, 40, 50 or DEBUG, INFO, WARN, WARNING, ERROR, CRITICAL";
        int level = herd_config_parse_log_level(raw);
        return level >= 0 ? g_strdup_printf("%d", level) : NULL;
    }
    case VALUE_DB:
        *why = "expected dict or none";
        if (g_ascii_strcasecmp(raw, "dict") == 0 || g_ascii_strcasecmp(raw, "none") == 0)
            return g_ascii_strdown(raw, -1);
        return NULL;
    case VALUE_SIGNATURE_SCHEME:
        *why = "herd supports only hmac-sha256";
        return g_ascii_strcasecmp(raw, "hmac-sha256") == 0 ? g_strdup("hmac-sha256") : NULL;
    }
    *why = "unknown value kind";
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Loading state                                                                         */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    /* where: flags only, since they decide which files are read */
    char *profile;
    char *profile_dir;
    char *ipython_dir;
    char *config_path;
    /* the flags layer: highest precedence */
    GKeyFile *flags;
    GPtrArray *warnings;
    /* --ports may be repeated; the values accumulate like ipcontroller's list trait */
    gboolean flag_ports_seen;
} LoadState;

static void add_warning(LoadState *st, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void add_warning(LoadState *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(st->warnings, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

/* Validate raw against the key's kind and store it in layer. where names the source in
 * the error ("--ping", "herd.conf: [controller] ping", "ipcontroller_config.py:3: ..."). */
static gboolean set_checked(GKeyFile *layer, const char *group, const char *key, const char *raw,
                            const char *where, GError **err)
{
    const KeySpec *spec = find_key_spec(group, key);
    g_assert(spec != NULL); /* callers only pass keys from the tables */
    const char *why = NULL;
    g_autofree char *normalized = normalize_value(spec->kind, raw, &why);
    if (normalized == NULL) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE, "%s: invalid value '%s': %s", where,
                    raw, why);
        return FALSE;
    }
    if (spec->kind == VALUE_PATH_LIST)
        g_key_file_set_value(layer, group, key, normalized);
    else
        g_key_file_set_string(layer, group, key, normalized);
    return TRUE;
}

static gboolean read_keyfile_secret(const char *path, const char *where, char **out, GError **err)
{
    g_autoptr(GError) local = NULL;
    char *contents = NULL;
    if (!g_file_get_contents(path, &contents, NULL, &local)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE, "%s: cannot read the key file: %s", where,
                    local->message);
        return FALSE;
    }
    /* Like jupyter_client's Session: the key is the file's content, whitespace-stripped. */
    *out = g_strstrip(contents);
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* ipcontroller traits (`--Class.trait=value`, `c.Class.trait = value`)                  */
/* ------------------------------------------------------------------------------------ */

typedef enum {
    TRAIT_SET,             /* store in group/key */
    TRAIT_BOTH_TRANSPORTS, /* IPController.transport: client and engine side */
    TRAIT_KEYFILE,         /* Session.keyfile: read the key from the file */
    TRAIT_DB_CLASS,        /* IPController.db_class: DictDB / NoDB / ... */
    TRAIT_IGNORED,         /* accepted, has no herd equivalent: warn */
} TraitAction;

typedef struct {
    const char *name; /* canonical Class.trait */
    TraitAction action;
    const char *group;
    const char *key;
} TraitSpec;

static const TraitSpec known_traits[] = {
    {"HeartMonitor.period", TRAIT_SET, GROUP_CONTROLLER, "ping"},
    {"HeartMonitor.max_heartmonitor_misses", TRAIT_SET, GROUP_CONTROLLER, "heartbeat_misses"},
    {"IPController.registration_timeout", TRAIT_SET, GROUP_CONTROLLER, "registration_timeout"},
    {"IPController.ip", TRAIT_SET, GROUP_CONTROLLER, "ip"},
    {"IPController.client_ip", TRAIT_SET, GROUP_CONTROLLER, "client_ip"},
    {"IPController.engine_ip", TRAIT_SET, GROUP_CONTROLLER, "engine_ip"},
    {"IPController.location", TRAIT_SET, GROUP_CONTROLLER, "location"},
    {"IPController.ports", TRAIT_SET, GROUP_CONTROLLER, "ports"},
    {"IPController.reuse_files", TRAIT_SET, GROUP_CONTROLLER, "reuse"},
    {"IPController.ssh_server", TRAIT_SET, GROUP_CONTROLLER, "ssh"},
    {"IPController.engine_ssh_server", TRAIT_SET, GROUP_CONTROLLER, "engine_ssh"},
    {"IPController.transport", TRAIT_BOTH_TRANSPORTS, NULL, NULL},
    {"IPController.client_transport", TRAIT_SET, GROUP_TRANSPORT, "client"},
    {"IPController.engine_transport", TRAIT_SET, GROUP_TRANSPORT, "engine"},
    {"IPController.db_class", TRAIT_DB_CLASS, GROUP_CONTROLLER, "db"},
    {"IPController.log_level", TRAIT_SET, GROUP_CONTROLLER, "log_level"},
    {"IPController.cluster_id", TRAIT_SET, GROUP_CONTROLLER, "cluster_id"},
    {"IPController.log_to_file", TRAIT_SET, GROUP_CONTROLLER, "log_to_file"},
    {"Application.log_level", TRAIT_SET, GROUP_CONTROLLER, "log_level"},
    {"BaseParallelApplication.cluster_id", TRAIT_SET, GROUP_CONTROLLER, "cluster_id"},
    {"BaseParallelApplication.log_to_file", TRAIT_SET, GROUP_CONTROLLER, "log_to_file"},
    {"TaskScheduler.hwm", TRAIT_SET, GROUP_TASK_OPTIONS, "hwm"},
    {"TaskScheduler.scheme_name", TRAIT_SET, GROUP_TASK_OPTIONS, "scheme"},
    {"Session.key", TRAIT_SET, GROUP_CONTROLLER, "key"},
    {"Session.keyfile", TRAIT_KEYFILE, GROUP_CONTROLLER, "key"},
    {"Session.signature_scheme", TRAIT_SET, GROUP_CONTROLLER, "signature_scheme"},
    {"Session.username", TRAIT_SET, GROUP_CONTROLLER, "username"},
    {"Session.session", TRAIT_IGNORED, NULL, NULL},
    {"DictDB.record_limit", TRAIT_SET, GROUP_CONTROLLER, "record_limit"},
    {"DictDB.size_limit", TRAIT_SET, GROUP_CONTROLLER, "size_limit"},
    {"DictDB.cull_fraction", TRAIT_SET, GROUP_CONTROLLER, "cull_fraction"},
};

/* Deprecated class names ipyparallel still maps onto IPController. */
static const char *const ipcontroller_aliases[] = {"HubFactory", "IPControllerApp"};

static const TraitSpec *find_trait(const char *class_name, const char *trait)
{
    const char *canonical_class = class_name;
    for (gsize i = 0; i < G_N_ELEMENTS(ipcontroller_aliases); i++)
        if (g_str_equal(class_name, ipcontroller_aliases[i]))
            canonical_class = "IPController";
    g_autofree char *name = g_strconcat(canonical_class, ".", trait, NULL);
    for (gsize i = 0; i < G_N_ELEMENTS(known_traits); i++)
        if (g_str_equal(known_traits[i].name, name))
            return &known_traits[i];
    return NULL;
}

static const TraitSpec *find_trait_dotted(const char *dotted)
{
    const char *dot = strrchr(dotted, '.');
    if (dot == NULL || dot == dotted || dot[1] == '\0')
        return NULL;
    g_autofree char *class_name = g_strndup(dotted, (gsize)(dot - dotted));
    return find_trait(class_name, dot + 1);
}

/* Map IPController.db_class values (short names or dotted class paths) to [controller] db. */
static gboolean apply_db_class(LoadState *st, GKeyFile *layer, const char *value, const char *where,
                               GError **err)
{
    const char *base = strrchr(value, '.') ? strrchr(value, '.') + 1 : value;
    if (g_ascii_strcasecmp(base, "NoDB") == 0)
        return set_checked(layer, GROUP_CONTROLLER, "db", "none", where, err);
    if (g_ascii_strcasecmp(base, "DictDB") == 0)
        return set_checked(layer, GROUP_CONTROLLER, "db", "dict", where, err);
    if (g_ascii_strcasecmp(base, "SQLiteDB") == 0 || g_ascii_strcasecmp(base, "MongoDB") == 0) {
        add_warning(st, "%s: herd keeps task records in memory only; using the dict database instead of %s",
                    where, value);
        return set_checked(layer, GROUP_CONTROLLER, "db", "dict", where, err);
    }
    g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE,
                "%s: invalid value '%s': expected DictDB or NoDB", where, value);
    return FALSE;
}

/* Apply one trait. value NULL means Python's None: forget what this source set, so the
 * lower-precedence value (or the default) applies. */
static gboolean apply_trait(LoadState *st, GKeyFile *layer, const TraitSpec *trait, const char *value,
                            const char *where, GError **err)
{
    if (value == NULL) {
        if (trait->action == TRAIT_BOTH_TRANSPORTS) {
            g_key_file_remove_key(layer, GROUP_TRANSPORT, "client", NULL);
            g_key_file_remove_key(layer, GROUP_TRANSPORT, "engine", NULL);
        } else if (trait->group != NULL) {
            g_key_file_remove_key(layer, trait->group, trait->key, NULL);
        }
        return TRUE;
    }
    switch (trait->action) {
    case TRAIT_SET:
        return set_checked(layer, trait->group, trait->key, value, where, err);
    case TRAIT_BOTH_TRANSPORTS:
        return set_checked(layer, GROUP_TRANSPORT, "client", value, where, err) &&
               set_checked(layer, GROUP_TRANSPORT, "engine", value, where, err);
    case TRAIT_KEYFILE: {
        if (*value == '\0')
            return TRUE; /* jupyter_client: an empty keyfile means "no key file" */
        g_autofree char *secret = NULL;
        return read_keyfile_secret(value, where, &secret, err) &&
               set_checked(layer, GROUP_CONTROLLER, "key", secret, where, err);
    }
    case TRAIT_DB_CLASS:
        return apply_db_class(st, layer, value, where, err);
    case TRAIT_IGNORED:
        add_warning(st, "%s: %s has no effect in herd; ignored", where, trait->name);
        return TRUE;
    }
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* ipcontroller_config.py: `c.Class.trait = literal` lines                               */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    const char *p; /* current position in the line */
} Cursor;

static void skip_blanks(Cursor *c)
{
    while (*c->p == ' ' || *c->p == '\t')
        c->p++;
}

static gboolean at_line_end(Cursor *c)
{
    skip_blanks(c);
    return *c->p == '\0' || *c->p == '#';
}

static char *parse_identifier(Cursor *c)
{
    const char *start = c->p;
    if (!g_ascii_isalpha(*c->p) && *c->p != '_')
        return NULL;
    while (g_ascii_isalnum(*c->p) || *c->p == '_')
        c->p++;
    return g_strndup(start, (gsize)(c->p - start));
}

static gboolean match_text(Cursor *c, const char *text)
{
    skip_blanks(c);
    if (!g_str_has_prefix(c->p, text))
        return FALSE;
    c->p += strlen(text);
    return TRUE;
}

/* A Python string literal with an optional b/u/r prefix; common escapes are decoded. */
static char *parse_string_literal(Cursor *c)
{
    gboolean raw = FALSE;
    const char *p = c->p;
    while (*p && strchr("bBuUrR", *p) && p - c->p < 2) {
        if (*p == 'r' || *p == 'R')
            raw = TRUE;
        p++;
    }
    char quote = *p;
    if (quote != '\'' && quote != '"')
        return NULL;
    p++;
    GString *out = g_string_new(NULL);
    for (; *p && *p != quote; p++) {
        if (*p == '\\' && !raw && p[1] != '\0') {
            p++;
            switch (*p) {
            case 'n': g_string_append_c(out, '\n'); break;
            case 't': g_string_append_c(out, '\t'); break;
            case 'r': g_string_append_c(out, '\r'); break;
            case '\\':
            case '\'':
            case '"': g_string_append_c(out, *p); break;
            default: /* Python keeps unknown escapes verbatim */
                g_string_append_c(out, '\\');
                g_string_append_c(out, *p);
            }
        } else {
            g_string_append_c(out, *p);
        }
    }
    if (*p != quote) {
        g_string_free(out, TRUE);
        return NULL;
    }
    c->p = p + 1;
    return g_string_free(out, FALSE);
}

static char *parse_number_literal(Cursor *c)
{
    char *end = NULL;
    const char *start = c->p;
    if (!g_ascii_isdigit(*start) && !((*start == '-' || *start == '+' || *start == '.') &&
                                      (g_ascii_isdigit(start[1]) || start[1] == '.')))
        return NULL;
    g_ascii_strtod(start, &end);
    if (end == start)
        return NULL;
    c->p = end;
    /* Keep the source text: "200" must stay an integer for integer settings. */
    return g_strndup(start, (gsize)(end - start));
}

/* A scalar literal: string, number, True/False. Sets *is_none for None. */
static char *parse_scalar_literal(Cursor *c, gboolean *is_none)
{
    skip_blanks(c);
    *is_none = FALSE;
    char *text = parse_string_literal(c);
    if (text == NULL)
        text = parse_number_literal(c);
    if (text != NULL)
        return text;
    const char *save = c->p;
    g_autofree char *word = parse_identifier(c);
    if (word != NULL && g_str_equal(word, "True"))
        return g_strdup("true");
    if (word != NULL && g_str_equal(word, "False"))
        return g_strdup("false");
    if (word != NULL && g_str_equal(word, "None")) {
        *is_none = TRUE;
        return g_strdup("");
    }
    c->p = save;
    return NULL;
}

/* A list of scalars becomes their texts joined by ',' (how herd spells port lists). */
static char *parse_list_literal(Cursor *c)
{
    if (!match_text(c, "["))
        return NULL;
    g_autoptr(GPtrArray) items = g_ptr_array_new_with_free_func(g_free);
    for (;;) {
        if (match_text(c, "]"))
            break;
        gboolean is_none;
        char *item = parse_scalar_literal(c, &is_none);
        if (item == NULL || is_none) {
            g_free(item);
            return NULL;
        }
        g_ptr_array_add(items, item);
        if (match_text(c, ","))
            continue;
        if (!match_text(c, "]"))
            return NULL;
        break;
    }
    g_ptr_array_add(items, NULL);
    return g_strjoinv(",", (char **)items->pdata);
}

/* Parse "c.Class.trait = literal" (with an optional trailing comment). On success the
 * value is returned in *value (NULL for None). */
static gboolean parse_assignment_line(const char *line, char **class_name, char **trait, char **value)
{
    Cursor c = {line};
    g_autofree char *cls = NULL, *name = NULL, *text = NULL;
    gboolean is_none = FALSE;
    if (!match_text(&c, "c."))
        return FALSE;
    cls = parse_identifier(&c);
    if (cls == NULL || *c.p != '.')
        return FALSE;
    c.p++;
    name = parse_identifier(&c);
    if (name == NULL || !match_text(&c, "=") || *c.p == '=')
        return FALSE;
    skip_blanks(&c);
    text = *c.p == '[' ? parse_list_literal(&c) : parse_scalar_literal(&c, &is_none);
    if (text == NULL || !at_line_end(&c))
        return FALSE;
    *class_name = g_steal_pointer(&cls);
    *trait = g_steal_pointer(&name);
    *value = is_none ? NULL : g_steal_pointer(&text);
    return TRUE;
}

static gboolean is_get_config_line(const char *line)
{
    Cursor c = {line};
    return match_text(&c, "c") && match_text(&c, "=") && match_text(&c, "get_config") &&
           match_text(&c, "(") && match_text(&c, ")") && at_line_end(&c);
}

static gboolean load_python_line(LoadState *st, GKeyFile *layer, const char *path, guint lineno,
                                 const char *line, GError **err)
{
    const char *first = line;
    while (g_ascii_isspace(*first))
        first++;
    if (*first == '\0' || *first == '#' || is_get_config_line(line))
        return TRUE;
    g_autofree char *cls = NULL, *trait = NULL, *value = NULL;
    if (first != line || !parse_assignment_line(line, &cls, &trait, &value)) {
        add_warning(st, "%s:%u: not a `c.Class.trait = literal` line herd understands; ignored", path, lineno);
        return TRUE;
    }
    const TraitSpec *spec = find_trait(cls, trait);
    if (spec == NULL) {
        add_warning(st, "%s:%u: c.%s.%s is not a setting herd uses; ignored", path, lineno, cls, trait);
        return TRUE;
    }
    g_autofree char *where = g_strdup_printf("%s:%u: c.%s.%s", path, lineno, cls, trait);
    return apply_trait(st, layer, spec, value, where, err);
}

static gboolean load_python_config(LoadState *st, GKeyFile *layer, const char *path, GError **err)
{
    g_autofree char *contents = NULL;
    g_autoptr(GError) local = NULL;
    if (!g_file_get_contents(path, &contents, NULL, &local)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE, "%s: %s", path, local->message);
        return FALSE;
    }
    g_auto(GStrv) lines = g_strsplit(contents, "\n", -1);
    for (guint i = 0; lines[i] != NULL; i++) {
        gsize len = strlen(lines[i]);
        if (len > 0 && lines[i][len - 1] == '\r')
            lines[i][len - 1] = '\0';
        if (!load_python_line(st, layer, path, i + 1, lines[i], err))
            return FALSE;
    }
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* ipcontroller_config.json: {"Class": {"trait": value}}                                */
/* ------------------------------------------------------------------------------------ */

static char *format_double(double d)
{
    char buf[G_ASCII_DTOSTR_BUF_SIZE];
    /* The shortest text that reads back as the same double, like Python's repr. */
    for (int digits = 15; digits <= 17; digits++) {
        char fmt[8];
        g_snprintf(fmt, sizeof fmt, "%%.%dg", digits);
        g_ascii_formatd(buf, sizeof buf, fmt, d);
        if (g_ascii_strtod(buf, NULL) == d)
            break;
    }
    return g_strdup(buf);
}

/* The text of a JSON scalar, or NULL if node is not one. */
static char *json_scalar_text(JsonNode *node)
{
    if (!JSON_NODE_HOLDS_VALUE(node))
        return NULL;
    switch (json_node_get_value_type(node)) {
    case G_TYPE_STRING: return g_strdup(json_node_get_string(node));
    case G_TYPE_INT64: return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(node));
    case G_TYPE_DOUBLE: return format_double(json_node_get_double(node));
    case G_TYPE_BOOLEAN: return g_strdup(json_node_get_boolean(node) ? "true" : "false");
    default: return NULL;
    }
}

/* *text is NULL for JSON null; returns FALSE when the value has no herd spelling. */
static gboolean json_value_text(JsonNode *node, char **text)
{
    *text = NULL;
    if (JSON_NODE_HOLDS_NULL(node))
        return TRUE;
    if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *array = json_node_get_array(node);
        g_autoptr(GPtrArray) items = g_ptr_array_new_with_free_func(g_free);
        for (guint i = 0; i < json_array_get_length(array); i++) {
            char *item = json_scalar_text(json_array_get_element(array, i));
            if (item == NULL)
                return FALSE;
            g_ptr_array_add(items, item);
        }
        g_ptr_array_add(items, NULL);
        *text = g_strjoinv(",", (char **)items->pdata);
        return TRUE;
    }
    *text = json_scalar_text(node);
    return *text != NULL;
}

static gboolean load_json_class(LoadState *st, GKeyFile *layer, const char *path, const char *cls,
                                JsonObject *traits, GError **err)
{
    g_autoptr(GList) members = json_object_get_members(traits);
    for (GList *m = members; m != NULL; m = m->next) {
        const char *trait = m->data;
        const TraitSpec *spec = find_trait(cls, trait);
        if (spec == NULL) {
            add_warning(st, "%s: %s.%s is not a setting herd uses; ignored", path, cls, trait);
            continue;
        }
        g_autofree char *value = NULL;
        if (!json_value_text(json_object_get_member(traits, trait), &value)) {
            add_warning(st, "%s: %s.%s has a value herd cannot interpret; ignored", path, cls, trait);
            continue;
        }
        g_autofree char *where = g_strdup_printf("%s: %s.%s", path, cls, trait);
        if (!apply_trait(st, layer, spec, value, where, err))
            return FALSE;
    }
    return TRUE;
}

static gboolean load_json_config(LoadState *st, GKeyFile *layer, const char *path, GError **err)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) local = NULL;
    if (!json_parser_load_from_file(parser, path, &local)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE, "%s: %s", path, local->message);
        return FALSE;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (root == NULL || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE,
                    "%s: expected a JSON object {\"Class\": {\"trait\": value}}", path);
        return FALSE;
    }
    JsonObject *classes = json_node_get_object(root);
    g_autoptr(GList) members = json_object_get_members(classes);
    for (GList *m = members; m != NULL; m = m->next) {
        JsonNode *traits = json_object_get_member(classes, m->data);
        if (!JSON_NODE_HOLDS_OBJECT(traits)) {
            add_warning(st, "%s: \"%s\" is not an object of settings; ignored", path, (const char *)m->data);
            continue;
        }
        if (!load_json_class(st, layer, path, m->data, json_node_get_object(traits), err))
            return FALSE;
    }
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* herd.conf                                                                             */
/* ------------------------------------------------------------------------------------ */

static gboolean load_core_group(GKeyFile *file, GKeyFile *layer, const char *path, const char *group,
                                GError **err)
{
    g_auto(GStrv) keys = g_key_file_get_keys(file, group, NULL, NULL);
    for (char **key = keys; key && *key; key++) {
        const KeySpec *spec = find_key_spec(group, *key);
        if (spec == NULL) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY, "%s: unknown key '%s' in [%s]",
                        path, *key, group);
            return FALSE;
        }
        g_autofree char *where = g_strdup_printf("%s: [%s] %s", path, group, *key);
        g_autoptr(GError) local = NULL;
        g_autofree char *raw = spec->kind == VALUE_PATH_LIST ? g_key_file_get_value(file, group, *key, &local)
                                                              : g_key_file_get_string(file, group, *key, &local);
        if (raw == NULL) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE, "%s: %s", where, local->message);
            return FALSE;
        }
        if (!set_checked(layer, group, *key, raw, where, err))
            return FALSE;
    }
    return TRUE;
}

static void copy_group_raw(GKeyFile *from, GKeyFile *to, const char *group)
{
    g_auto(GStrv) keys = g_key_file_get_keys(from, group, NULL, NULL);
    for (char **key = keys; key && *key; key++) {
        g_autofree char *value = g_key_file_get_value(from, group, *key, NULL);
        g_key_file_set_value(to, group, *key, value ? value : "");
    }
}

static gboolean load_herd_conf(GKeyFile *layer, const char *path, GError **err)
{
    g_autoptr(GKeyFile) file = g_key_file_new();
    g_autoptr(GError) local = NULL;
    if (!g_key_file_load_from_file(file, path, G_KEY_FILE_NONE, &local)) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE, "%s: %s", path, local->message);
        return FALSE;
    }
    g_auto(GStrv) groups = g_key_file_get_groups(file, NULL);
    for (char **group = groups; *group; group++) {
        if (is_core_group(*group)) {
            if (!load_core_group(file, layer, path, *group, err))
                return FALSE;
        } else if (is_plugin_group(*group)) {
            copy_group_raw(file, layer, *group);
        } else {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_KEY,
                        "%s: unknown group [%s] (expected [controller], [transport], [scheduler], "
                        "[transport.<plugin>] or [scheduler.<channel>])",
                        path, *group);
            return FALSE;
        }
    }
    return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* Command-line flags                                                                    */
/* ------------------------------------------------------------------------------------ */

typedef enum {
    FLAG_PROFILE,
    FLAG_PROFILE_DIR,
    FLAG_IPYTHON_DIR,
    FLAG_CONFIG,
    FLAG_SET,            /* group/key = the value */
    FLAG_SET_BOOL,       /* group/key = true, or the value of --flag=value */
    FLAG_SET_FIXED,      /* group/key = fixed, the flag takes no value */
    FLAG_PORTS,          /* accumulates */
    FLAG_BOTH_TRANSPORTS,
    FLAG_KEYFILE,
    FLAG_SECURE,         /* a fresh random key */
    FLAG_DB_FALLBACK,    /* database herd does not have: dict, with a warning */
    FLAG_IGNORED,        /* takes a value, warns */
    FLAG_HELP,
    FLAG_VERSION,
} FlagAction;

typedef struct {
    const char *name;
    FlagAction action;
    const char *group;
    const char *key;
    const char *fixed;
    const char *arg; /* NULL for switches */
    const char *help;
} FlagSpec;

static const FlagSpec known_flags[] = {
    {"profile", FLAG_PROFILE, NULL, NULL, NULL, "NAME", "profile name (default: default)"},
    {"profile-dir", FLAG_PROFILE_DIR, NULL, NULL, NULL, "DIR", "profile folder (wins over --profile)"},
    {"ipython-dir", FLAG_IPYTHON_DIR, NULL, NULL, NULL, "DIR", "IPython folder (default: $IPYTHONDIR or ~/.ipython)"},
    {"config", FLAG_CONFIG, NULL, NULL, NULL, "FILE",
     "read FILE instead of <profile>/herd.conf (FILE.py/.json: ipcontroller config)"},
    {"cluster-id", FLAG_SET, GROUP_CONTROLLER, "cluster_id", NULL, "ID", "connection file infix; '' for none"},
    {"ip", FLAG_SET, GROUP_CONTROLLER, "ip", NULL, "IP", "bind address of every channel (default 127.0.0.1)"},
    {"location", FLAG_SET, GROUP_CONTROLLER, "location", NULL, "HOST", "host name written to the files"},
    {"ports", FLAG_PORTS, GROUP_CONTROLLER, "ports", NULL, "LIST", "port pool, e.g. 10101-10120 (repeatable)"},
    {"ping", FLAG_SET, GROUP_CONTROLLER, "ping", NULL, "MS", "heartbeat period in milliseconds (default 3000)"},
    {"reuse", FLAG_SET_BOOL, GROUP_CONTROLLER, "reuse", NULL, NULL, "reuse existing connection files"},
    {"dictdb", FLAG_SET_FIXED, GROUP_CONTROLLER, "db", "dict", NULL, "keep task records in memory (default)"},
    {"nodb", FLAG_SET_FIXED, GROUP_CONTROLLER, "db", "none", NULL, "keep no task records"},
    {"sqlitedb", FLAG_DB_FALLBACK, GROUP_CONTROLLER, "db", "dict", NULL, "accepted; herd uses the dict database"},
    {"mongodb", FLAG_DB_FALLBACK, GROUP_CONTROLLER, "db", "dict", NULL, "accepted; herd uses the dict database"},
    {"log-level", FLAG_SET, GROUP_CONTROLLER, "log_level", NULL, "LEVEL", "0/10/20/30/40/50 or DEBUG..CRITICAL"},
    {"debug", FLAG_SET_FIXED, GROUP_CONTROLLER, "log_level", "10", NULL, "same as --log-level=DEBUG"},
    {"quiet", FLAG_SET_FIXED, GROUP_CONTROLLER, "log_level", "50", NULL, "same as --log-level=CRITICAL"},
    {"log-to-file", FLAG_SET_BOOL, GROUP_CONTROLLER, "log_to_file", NULL, NULL, "log to <profile>/log/"},
    {"scheme", FLAG_SET, GROUP_TASK_OPTIONS, "scheme", NULL, "NAME", "task scheduler scheme (default leastload)"},
    {"hwm", FLAG_SET, GROUP_TASK_OPTIONS, "hwm", NULL, "N", "task scheduler per-engine limit, 0 = unlimited"},
    {"ssh", FLAG_SET, GROUP_CONTROLLER, "ssh", NULL, "HOST", "ssh server written to the client file"},
    {"enginessh", FLAG_SET, GROUP_CONTROLLER, "engine_ssh", NULL, "HOST", "ssh server written to the engine file"},
    {"keyfile", FLAG_KEYFILE, GROUP_CONTROLLER, "key", NULL, "FILE", "read the HMAC key from FILE"},
    {"secure", FLAG_SECURE, GROUP_CONTROLLER, "key", NULL, NULL, "sign messages with a new random key (default)"},
    {"no-secure", FLAG_SET_FIXED, GROUP_CONTROLLER, "key", "", NULL, "do not sign messages (empty key)"},
    {"user", FLAG_SET, GROUP_CONTROLLER, "username", NULL, "NAME", "username in message headers (default $USER)"},
    {"ident", FLAG_IGNORED, NULL, NULL, NULL, "ID", "accepted and ignored (herd picks its session id)"},
    {"transport", FLAG_BOTH_TRANSPORTS, NULL, NULL, NULL, "NAME", "transport plugin of both sides (tcp, ipc)"},
    {"client-transport", FLAG_SET, GROUP_TRANSPORT, "client", NULL, "NAME", "transport plugin for clients"},
    {"engine-transport", FLAG_SET, GROUP_TRANSPORT, "engine", NULL, "NAME", "transport plugin for engines"},
    {"help", FLAG_HELP, NULL, NULL, NULL, NULL, "show this help and exit"},
    {"help-all", FLAG_HELP, NULL, NULL, NULL, NULL, "same as --help"},
    {"version", FLAG_VERSION, NULL, NULL, NULL, NULL, "print the herd version and exit"},
};

static const FlagSpec *find_flag(const char *option_name)
{
    if (g_str_equal(option_name, "-h"))
        option_name = "--help";
    if (!g_str_has_prefix(option_name, "--"))
        return NULL;
    for (gsize i = 0; i < G_N_ELEMENTS(known_flags); i++)
        if (g_str_equal(known_flags[i].name, option_name + 2))
            return &known_flags[i];
    return NULL;
}

static void replace_string(char **slot, const char *value)
{
    g_free(*slot);
    *slot = g_strdup(value);
}

static gboolean apply_ports_flag(LoadState *st, const char *value, const char *where, GError **err)
{
    g_autofree char *joined = NULL;
    if (st->flag_ports_seen) {
        g_autofree char *previous = g_key_file_get_string(st->flags, GROUP_CONTROLLER, "ports", NULL);
        if (previous != NULL && *previous != '\0' && *value != '\0')
            joined = g_strconcat(previous, ",", value, NULL);
    }
    st->flag_ports_seen = TRUE;
    return set_checked(st->flags, GROUP_CONTROLLER, "ports", joined ? joined : value, where, err);
}

static gboolean apply_flag(LoadState *st, const FlagSpec *flag, const char *value, GError **err)
{
    g_autofree char *where = g_strconcat("--", flag->name, NULL);
    if (flag->arg == NULL && value != NULL && flag->action != FLAG_SET_BOOL) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE, "%s takes no value (got '%s')", where,
                    value);
        return FALSE;
    }
    switch (flag->action) {
    case FLAG_PROFILE: replace_string(&st->profile, value); return TRUE;
    case FLAG_PROFILE_DIR: replace_string(&st->profile_dir, value); return TRUE;
    case FLAG_IPYTHON_DIR: replace_string(&st->ipython_dir, value); return TRUE;
    case FLAG_CONFIG: replace_string(&st->config_path, value); return TRUE;
    case FLAG_SET: return set_checked(st->flags, flag->group, flag->key, value, where, err);
    case FLAG_SET_BOOL: return set_checked(st->flags, flag->group, flag->key, value ? value : "true", where, err);
    case FLAG_SET_FIXED: return set_checked(st->flags, flag->group, flag->key, flag->fixed, where, err);
    case FLAG_PORTS: return apply_ports_flag(st, value, where, err);
    case FLAG_BOTH_TRANSPORTS:
        return set_checked(st->flags, GROUP_TRANSPORT, "client", value, where, err) &&
               set_checked(st->flags, GROUP_TRANSPORT, "engine", value, where, err);
    case FLAG_KEYFILE: {
        g_autofree char *secret = NULL;
        return read_keyfile_secret(value, where, &secret, err) &&
               set_checked(st->flags, GROUP_CONTROLLER, "key", secret, where, err);
    }
    case FLAG_SECURE: {
        g_autofree char *key = g_uuid_string_random();
        return set_checked(st->flags, GROUP_CONTROLLER, "key", key, where, err);
    }
    case FLAG_DB_FALLBACK:
        add_warning(st, "%s: herd keeps task records in memory only; using the dict database", where);
        return set_checked(st->flags, flag->group, flag->key, flag->fixed, where, err);
    case FLAG_IGNORED: add_warning(st, "%s: has no effect in herd; ignored", where); return TRUE;
    case FLAG_HELP: {
        /* Like every GError message, without the final newline: the caller prints a line. */
        g_autofree char *text = g_strchomp(herd_config_help());
        g_set_error_literal(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_HELP, text);
        return FALSE;
    }
    case FLAG_VERSION: /* the bare version, as `ipcontroller --version` prints it */
        g_set_error_literal(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_HELP, HERD_VERSION);
        return FALSE;
    }
    return TRUE;
}

/* Traitlets strips one pair of matching quotes around a command-line string value. */
static char *unquote_cli_value(const char *value)
{
    gsize len = strlen(value);
    if (len >= 2 && (value[0] == '\'' || value[0] == '"') && value[len - 1] == value[0])
        return g_strndup(value + 1, len - 2);
    return g_strdup(value);
}

static gboolean on_flag(const char *option_name, const char *value, gpointer data, GError **err)
{
    LoadState *st = data;
    const FlagSpec *flag = find_flag(option_name);
    g_assert(flag != NULL); /* GOption only calls us for registered names */
    return apply_flag(st, flag, value, err);
}

static gboolean on_trait_flag(const char *option_name, const char *value, gpointer data, GError **err)
{
    LoadState *st = data;
    const TraitSpec *trait = find_trait_dotted(option_name + 2);
    g_assert(trait != NULL);
    g_autofree char *unquoted = unquote_cli_value(value);
    return apply_trait(st, st->flags, trait, unquoted, option_name, err);
}

/* Every spelling of the mapped traits, IPController's deprecated class aliases included. */
static GPtrArray *trait_flag_names(void)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    for (gsize i = 0; i < G_N_ELEMENTS(known_traits); i++) {
        const char *name = known_traits[i].name;
        g_ptr_array_add(names, g_strdup(name));
        if (g_str_has_prefix(name, "IPController."))
            for (gsize a = 0; a < G_N_ELEMENTS(ipcontroller_aliases); a++)
                g_ptr_array_add(names, g_strconcat(ipcontroller_aliases[a], name + strlen("IPController"), NULL));
    }
    return names;
}

static GOptionEntry make_entry(const char *long_name, gboolean takes_value, gboolean optional_value,
                               GOptionArgFunc callback)
{
    GOptionEntry e = {0};
    e.long_name = long_name;
    e.arg = G_OPTION_ARG_CALLBACK;
    e.arg_data = (gpointer)callback;
    /* Switches still accept "=value" so that "--debug=1" is reported instead of ignored. */
    if (!takes_value || optional_value)
        e.flags = G_OPTION_FLAG_OPTIONAL_ARG;
    return e;
}

static GOptionContext *build_option_context(LoadState *st, GPtrArray *trait_names)
{
    GArray *entries = g_array_new(TRUE, TRUE, sizeof(GOptionEntry));
    for (gsize i = 0; i < G_N_ELEMENTS(known_flags); i++) {
        GOptionEntry e = make_entry(known_flags[i].name, known_flags[i].arg != NULL, FALSE, on_flag);
        if (known_flags[i].action == FLAG_HELP && g_str_equal(known_flags[i].name, "help"))
            e.short_name = 'h';
        g_array_append_val(entries, e);
    }
    for (guint i = 0; i < trait_names->len; i++) {
        GOptionEntry e = make_entry(trait_names->pdata[i], TRUE, FALSE, on_trait_flag);
        g_array_append_val(entries, e);
    }
    GOptionContext *context = g_option_context_new(NULL);
    /* herd renders its own help: GOption's would exit() from inside a library call. */
    g_option_context_set_help_enabled(context, FALSE);
    GOptionGroup *group = g_option_group_new("herdd", "herdd options", "herdd options", st, NULL);
    g_option_group_add_entries(group, (GOptionEntry *)(void *)entries->data);
    g_option_context_set_main_group(context, group);
    g_array_unref(entries); /* GOption copied the entries; names stay owned by trait_names */
    return context;
}

/* GOption reports "Unknown option --Foo.bar=1": name the flag alone, and say why. */
static void report_unknown_flag(const char *message, GError **err)
{
    const char *name = strstr(message, "-");
    g_autofree char *flag = g_strdup(name ? name : message);
    char *eq = strchr(flag, '=');
    if (eq)
        *eq = '\0';
    if (g_str_has_prefix(flag, "--") && strchr(flag + 2, '.') != NULL)
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_FLAG,
                    "unknown option %s: herd does not map this ipcontroller setting (see herdd --help)", flag);
    else
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_FLAG, "unknown option %s (see herdd --help)",
                    flag);
}

static gboolean parse_flags(LoadState *st, int argc, char **argv, GError **err)
{
    g_autoptr(GPtrArray) trait_names = trait_flag_names();
    GOptionContext *context = build_option_context(st, trait_names);
    /* GOption edits the vector it parses; the caller's argv stays untouched. */
    char **args = g_new0(char *, (gsize)argc + 2);
    args[0] = g_strdup(argc > 0 && argv[0] ? argv[0] : "herdd");
    for (int i = 1; i < argc; i++)
        args[i] = g_strdup(argv[i]);
    g_autoptr(GError) local = NULL;
    gboolean ok = g_option_context_parse_strv(context, &args, &local);
    g_option_context_free(context);
    if (!ok) {
        if (local->domain == HERD_CONFIG_ERROR)
            g_propagate_error(err, g_steal_pointer(&local));
        else if (g_error_matches(local, G_OPTION_ERROR, G_OPTION_ERROR_UNKNOWN_OPTION))
            report_unknown_flag(local->message, err);
        else
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_BAD_VALUE, "%s", local->message);
    } else if (args[0] != NULL && args[1] != NULL) {
        g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_UNKNOWN_FLAG,
                    "unexpected argument '%s' (herdd takes only options; see herdd --help)", args[1]);
        ok = FALSE;
    }
    g_strfreev(args);
    return ok;
}

/* ------------------------------------------------------------------------------------ */
/* Where: IPython folder, profile folder, config files                                  */
/* ------------------------------------------------------------------------------------ */

/* Expand a leading ~ and make the path absolute, as IPython does for its folders. */
static char *expand_path(const char *path)
{
    g_autofree char *expanded = NULL;
    if (g_str_equal(path, "~") || g_str_has_prefix(path, "~/"))
        expanded = g_build_filename(g_get_home_dir(), path + 1, NULL);
    else
        expanded = g_strdup(path);
    return g_canonicalize_filename(expanded, NULL);
}

static void resolve_where(LoadState *st, HerdConfig *cfg)
{
    const char *env_dir = g_getenv("IPYTHONDIR");
    if (st->ipython_dir != NULL)
        cfg->ipython_dir = expand_path(st->ipython_dir);
    else if (env_dir != NULL && *env_dir != '\0')
        cfg->ipython_dir = expand_path(env_dir);
    else
        cfg->ipython_dir = g_build_filename(g_get_home_dir(), ".ipython", NULL);
    cfg->profile = g_strdup(st->profile ? st->profile : "default");
    if (st->profile_dir != NULL) {
        cfg->profile_dir = expand_path(st->profile_dir);
    } else {
        g_autofree char *leaf = g_strconcat("profile_", cfg->profile, NULL);
        cfg->profile_dir = g_build_filename(cfg->ipython_dir, leaf, NULL);
    }
}

static gboolean has_suffix_nocase(const char *path, const char *suffix)
{
    gsize n = strlen(path), m = strlen(suffix);
    return n >= m && g_ascii_strcasecmp(path + n - m, suffix) == 0;
}

/* The profile's ipcontroller_config.py then .json (JSON wins, as in traitlets), then a
 * --config FILE.py/.json given on the command line. */
static gboolean load_ipcontroller_files(LoadState *st, HerdConfig *cfg, const char *extra, GKeyFile *layer,
                                        GError **err)
{
    g_autofree char *py = g_build_filename(cfg->profile_dir, "ipcontroller_config.py", NULL);
    g_autofree char *json = g_build_filename(cfg->profile_dir, "ipcontroller_config.json", NULL);
    if (g_file_test(py, G_FILE_TEST_IS_REGULAR) && !load_python_config(st, layer, py, err))
        return FALSE;
    if (g_file_test(json, G_FILE_TEST_IS_REGULAR) && !load_json_config(st, layer, json, err))
        return FALSE;
    if (extra != NULL && has_suffix_nocase(extra, ".py"))
        return load_python_config(st, layer, extra, err);
    if (extra != NULL && has_suffix_nocase(extra, ".json"))
        return load_json_config(st, layer, extra, err);
    return TRUE;
}

static gboolean load_conf_layer(HerdConfig *cfg, const char *extra, GKeyFile *layer, GError **err)
{
    if (extra != NULL && !has_suffix_nocase(extra, ".py") && !has_suffix_nocase(extra, ".json")) {
        if (!g_file_test(extra, G_FILE_TEST_IS_REGULAR)) {
            g_set_error(err, HERD_CONFIG_ERROR, HERD_CONFIG_ERROR_FILE, "--config %s: no such file", extra);
            return FALSE;
        }
        cfg->config_file = g_strdup(extra);
    } else {
        g_autofree char *candidate = g_build_filename(cfg->profile_dir, "herd.conf", NULL);
        if (g_file_test(candidate, G_FILE_TEST_IS_REGULAR))
            cfg->config_file = g_steal_pointer(&candidate);
    }
    return cfg->config_file == NULL || load_herd_conf(layer, cfg->config_file, err);
}

/* ------------------------------------------------------------------------------------ */
/* Merge and typed extraction                                                            */
/* ------------------------------------------------------------------------------------ */

static GKeyFile *defaults_layer(void)
{
    GKeyFile *layer = g_key_file_new();
    for (gsize i = 0; i < G_N_ELEMENTS(known_keys); i++)
        if (known_keys[i].default_value != NULL)
            g_key_file_set_value(layer, known_keys[i].group, known_keys[i].key, known_keys[i].default_value);
    return layer;
}

/* Copy every key of layer over merged. A source that sets ip means "this address for all
 * channels", so it overrides client_ip/engine_ip of lower sources (like ipcontroller's
 * ip observer); it sets its own client_ip/engine_ip after that. */
static void merge_layer(GKeyFile *merged, GKeyFile *layer)
{
    if (g_key_file_has_key(layer, GROUP_CONTROLLER, "ip", NULL)) {
        g_key_file_remove_key(merged, GROUP_CONTROLLER, "client_ip", NULL);
        g_key_file_remove_key(merged, GROUP_CONTROLLER, "engine_ip", NULL);
    }
    g_auto(GStrv) groups = g_key_file_get_groups(layer, NULL);
    for (char **group = groups; *group; group++)
        copy_group_raw(layer, merged, *group);
}

static char *get_string_or(GKeyFile *kf, const char *group, const char *key, const char *fallback)
{
    char *value = g_key_file_get_string(kf, group, key, NULL);
    return value != NULL ? value : g_strdup(fallback);
}

static int get_int(GKeyFile *kf, const char *key)
{
    return g_key_file_get_integer(kf, GROUP_CONTROLLER, key, NULL);
}

static gboolean get_bool(GKeyFile *kf, const char *key)
{
    return g_key_file_get_boolean(kf, GROUP_CONTROLLER, key, NULL);
}

static double get_double(GKeyFile *kf, const char *key)
{
    return g_key_file_get_double(kf, GROUP_CONTROLLER, key, NULL);
}

/* Fill a computed default into the merged file too, so plugins see what herd uses. */
static char *resolve_string(GKeyFile *kf, const char *key, const char *fallback)
{
    char *value = get_string_or(kf, GROUP_CONTROLLER, key, fallback);
    g_key_file_set_string(kf, GROUP_CONTROLLER, key, value);
    return value;
}

static void extract_network(HerdConfig *cfg, GKeyFile *kf)
{
    cfg->cluster_id = get_string_or(kf, GROUP_CONTROLLER, "cluster_id", "");
    cfg->ip = get_string_or(kf, GROUP_CONTROLLER, "ip", "127.0.0.1");
    cfg->client_ip = resolve_string(kf, "client_ip", cfg->ip);
    cfg->engine_ip = resolve_string(kf, "engine_ip", cfg->ip);
    cfg->location = resolve_string(kf, "location", g_get_host_name());
    cfg->client_transport = get_string_or(kf, GROUP_TRANSPORT, "client", "tcp");
    cfg->engine_transport = get_string_or(kf, GROUP_TRANSPORT, "engine", "tcp");
    cfg->ports = g_array_new(FALSE, FALSE, sizeof(int));
    g_autofree char *ports = get_string_or(kf, GROUP_CONTROLLER, "ports", "");
    if (*ports != '\0')
        herd_config_parse_ports(ports, cfg->ports, NULL); /* validated when the layer was built */
    cfg->ssh_client = get_string_or(kf, GROUP_CONTROLLER, "ssh", "");
    cfg->ssh_engine = get_string_or(kf, GROUP_CONTROLLER, "engine_ssh", "");
}

static void extract_settings(HerdConfig *cfg, GKeyFile *kf)
{
    cfg->ping_ms = get_int(kf, "ping");
    cfg->heartbeat_misses = get_int(kf, "heartbeat_misses");
    cfg->registration_timeout_s = get_double(kf, "registration_timeout");
    if (cfg->registration_timeout_s <= 0) {
        /* ipcontroller: max(30, int(0.01 * period)), i.e. ten heartbeats in seconds */
        cfg->registration_timeout_s = MAX(30, cfg->ping_ms / 100);
        g_key_file_set_double(kf, GROUP_CONTROLLER, "registration_timeout", cfg->registration_timeout_s);
    }
    cfg->reuse = get_bool(kf, "reuse");
    g_autofree char *db = get_string_or(kf, GROUP_CONTROLLER, "db", "dict");
    cfg->db = g_str_equal(db, "none") ? HERD_DB_NONE : HERD_DB_DICT;
    cfg->record_limit = get_int(kf, "record_limit");
    cfg->size_limit = g_key_file_get_int64(kf, GROUP_CONTROLLER, "size_limit", NULL);
    cfg->cull_fraction = get_double(kf, "cull_fraction");
    cfg->key = g_key_file_get_string(kf, GROUP_CONTROLLER, "key", NULL);
    cfg->signature_scheme = get_string_or(kf, GROUP_CONTROLLER, "signature_scheme", "hmac-sha256");
    cfg->username = g_key_file_get_string(kf, GROUP_CONTROLLER, "username", NULL);
    cfg->mux_scheduler = get_string_or(kf, GROUP_SCHEDULER, "mux", "mux");
    cfg->task_scheduler = get_string_or(kf, GROUP_SCHEDULER, "task", "task");
    cfg->broadcast_scheduler = get_string_or(kf, GROUP_SCHEDULER, "broadcast", "broadcast");
    cfg->log_level = get_int(kf, "log_level");
    cfg->log_to_file = get_bool(kf, "log_to_file");
    cfg->plugin_path = g_key_file_get_string_list(kf, GROUP_CONTROLLER, "plugin_path", NULL, NULL);
    if (cfg->plugin_path != NULL && cfg->plugin_path[0] == NULL)
        g_clear_pointer(&cfg->plugin_path, g_strfreev);
}

/* ------------------------------------------------------------------------------------ */
/* Public entry points                                                                   */
/* ------------------------------------------------------------------------------------ */

static void load_state_clear(LoadState *st)
{
    g_free(st->profile);
    g_free(st->profile_dir);
    g_free(st->ipython_dir);
    g_free(st->config_path);
    if (st->flags)
        g_key_file_unref(st->flags);
    if (st->warnings)
        g_ptr_array_unref(st->warnings);
}

static gboolean load_sources(LoadState *st, HerdConfig *cfg, int argc, char **argv, GError **err)
{
    if (!parse_flags(st, argc, argv, err))
        return FALSE;
    resolve_where(st, cfg);
    g_autofree char *extra = st->config_path ? expand_path(st->config_path) : NULL;
    g_autoptr(GKeyFile) defaults = defaults_layer();
    g_autoptr(GKeyFile) ipcontroller = g_key_file_new();
    g_autoptr(GKeyFile) conf = g_key_file_new();
    if (!load_ipcontroller_files(st, cfg, extra, ipcontroller, err) || !load_conf_layer(cfg, extra, conf, err))
        return FALSE;
    cfg->keyfile = g_key_file_new();
    merge_layer(cfg->keyfile, defaults);
    merge_layer(cfg->keyfile, ipcontroller);
    merge_layer(cfg->keyfile, conf);
    merge_layer(cfg->keyfile, st->flags);
    /* ipyparallel's BaseParallelApplication.initialize() assigns IPP_SESSION_KEY after
     * every config source was read, so the environment wins over all of them. */
    const char *env_key = g_getenv("IPP_SESSION_KEY");
    if (env_key != NULL)
        g_key_file_set_string(cfg->keyfile, GROUP_CONTROLLER, "key", env_key);
    extract_network(cfg, cfg->keyfile);
    extract_settings(cfg, cfg->keyfile);
    return TRUE;
}

HerdConfig *herd_config_load(int argc, char **argv, GError **err)
{
    LoadState st = {0};
    st.flags = g_key_file_new();
    st.warnings = g_ptr_array_new_with_free_func(g_free);
    HerdConfig *cfg = g_new0(HerdConfig, 1);
    gboolean ok = load_sources(&st, cfg, argc, argv, err);
    cfg->warnings = g_ptr_array_ref(st.warnings);
    load_state_clear(&st);
    if (!ok) {
        herd_config_free(cfg);
        return NULL;
    }
    return cfg;
}

void herd_config_free(HerdConfig *c)
{
    if (c == NULL)
        return;
    g_free(c->ipython_dir);
    g_free(c->profile);
    g_free(c->profile_dir);
    g_free(c->config_file);
    g_free(c->cluster_id);
    g_free(c->ip);
    g_free(c->client_ip);
    g_free(c->engine_ip);
    g_free(c->location);
    g_free(c->client_transport);
    g_free(c->engine_transport);
    if (c->ports)
        g_array_unref(c->ports);
    g_free(c->ssh_client);
    g_free(c->ssh_engine);
    g_free(c->key);
    g_free(c->signature_scheme);
    g_free(c->username);
    g_free(c->mux_scheduler);
    g_free(c->task_scheduler);
    g_free(c->broadcast_scheduler);
    g_strfreev(c->plugin_path);
    if (c->keyfile)
        g_key_file_unref(c->keyfile);
    if (c->warnings)
        g_ptr_array_unref(c->warnings);
    g_free(c);
}

char *herd_config_help(void)
{
    GString *out = g_string_new("Usage: herdd [OPTION...]\n\n"
                                "herd controller for IPython parallel: routes work from clients to engines.\n\n"
                                "Options (each VALUE as --flag=VALUE or --flag VALUE):\n");
    for (gsize i = 0; i < G_N_ELEMENTS(known_flags); i++) {
        const FlagSpec *f = &known_flags[i];
        g_autofree char *left = f->arg                         ? g_strdup_printf("--%s=%s", f->name, f->arg)
                                : f->action == FLAG_SET_BOOL ? g_strdup_printf("--%s[=BOOL]", f->name)
                                                             : g_strdup_printf("--%s", f->name);
        g_string_append_printf(out, "  %-26s %s\n", left, f->help);
    }
    g_string_append(out, "\nipcontroller settings accepted as --Class.trait=VALUE (and as\n"
                         "c.Class.trait = VALUE in the profile's ipcontroller_config.py):\n");
    for (gsize i = 0; i < G_N_ELEMENTS(known_traits); i++) {
        const TraitSpec *t = &known_traits[i];
        g_autofree char *target = t->action == TRAIT_BOTH_TRANSPORTS ? g_strdup("[transport] client and engine")
                                  : t->action == TRAIT_IGNORED       ? g_strdup("ignored")
                                                                     : g_strdup_printf("[%s] %s", t->group, t->key);
        g_string_append_printf(out, "  --%-40s %s\n", t->name, target);
    }
    g_string_append(out, "(HubFactory and IPControllerApp are accepted as IPController.)\n\n"
                         "Settings are read from defaults, then the profile's ipcontroller_config.py/.json,\n"
                         "then herd.conf in the profile folder (or --config FILE), then these flags.\n"
                         "See docs/configuration.md.\n");
    return g_string_free(out, FALSE);
}
