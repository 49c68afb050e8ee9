/* herd — JSON helpers (json-glib), ISO-8601 dates as the Python peers write them, and the
 * "wrapped exception" error content.
 */
#include "herd/wire.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

G_DEFINE_QUARK(herd-wire-error-quark, herd_wire_error)

/* Deepest nesting of arrays/objects accepted in a frame. json-glib parses recursively and
 * has no limit of its own, so a hostile frame of nested brackets would exhaust the
 * stack. Python's json module stops at about the same depth (its recursion limit). */
#define JSON_MAX_DEPTH 1000

/* Characters strict JSON allows outside string literals. */
static bool json_outside_string_char(guchar c)
{
    switch (c) {
    case '{': case '}': case '[': case ']': case ',': case ':':
    case ' ': case '\t': case '\n': case '\r':
    case '-': case '+': case '.': case 'e': case 'E':
    /* the letters of true, false, null */
    case 't': case 'r': case 'u': case 'f': case 'a': case 'l': case 's': case 'n':
        return true;
    default:
        return c >= '0' && c <= '9';
    }
}

/* Check that the bytes are strict JSON as far as nesting is concerned and not nested
 * deeper than JSON_MAX_DEPTH. Strings are double-quoted with backslash escapes; anything
 * else json-glib would tolerate (comments, single quotes, identifiers) is refused here,
 * because it could hide brackets from this count. The Python peers never emit it. */
static gboolean json_check_nesting(const char *data, gsize len, GError **err)
{
    gint depth = 0;
    bool in_string = false;
    for (gsize i = 0; i < len; i++) {
        guchar c = (guchar)data[i];
        if (in_string) {
            if (c == '\\')
                i++; /* skip the escaped character */
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > JSON_MAX_DEPTH) {
                g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_JSON,
                            "invalid JSON: nested deeper than %d levels", JSON_MAX_DEPTH);
                return FALSE;
            }
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (!json_outside_string_char(c)) {
            g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_JSON,
                        "invalid JSON: unexpected character 0x%02x at byte %" G_GSIZE_FORMAT, c, i);
            return FALSE;
        }
    }
    return TRUE;
}

/* "an array", "a string", ... for error messages. */
static const char *json_kind(JsonNode *n)
{
    switch (json_node_get_node_type(n)) {
    case JSON_NODE_OBJECT:
        return "an object";
    case JSON_NODE_ARRAY:
        return "an array";
    case JSON_NODE_NULL:
        return "null";
    case JSON_NODE_VALUE:
        break;
    }
    GType t = json_node_get_value_type(n);
    if (t == G_TYPE_STRING)
        return "a string";
    if (t == G_TYPE_BOOLEAN)
        return "a boolean";
    return "a number";
}

JsonNode *herd_json_parse_object(HerdBytes b, GError **err)
{
    if (b.data == NULL) { /* HERD_BYTES_NULL stands for "{}" */
        JsonNode *empty = json_node_new(JSON_NODE_OBJECT);
        json_node_take_object(empty, json_object_new());
        return empty;
    }

    const char *bad_utf8 = NULL;
    if (!g_utf8_validate_len(b.data, b.len, &bad_utf8)) {
        g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_UTF8,
                    "invalid UTF-8 in JSON at byte %" G_GSIZE_FORMAT, (gsize)(bad_utf8 - b.data));
        return NULL;
    }
    if (!json_check_nesting(b.data, b.len, err))
        return NULL;

    JsonParser *parser = json_parser_new();
    GError *perr = NULL;
    JsonNode *root = NULL;
    if (!json_parser_load_from_data(parser, b.data, (gssize)b.len, &perr)) {
        g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_JSON, "invalid JSON: %s", perr->message);
        g_error_free(perr);
    } else if (json_parser_get_root(parser) == NULL) {
        g_set_error_literal(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_JSON, "invalid JSON: empty");
    } else if (!JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        g_set_error(err, HERD_WIRE_ERROR, HERD_WIRE_ERROR_NOT_OBJECT, "JSON is %s, not an object",
                    json_kind(json_parser_get_root(parser)));
    } else {
        root = json_parser_steal_root(parser);
    }
    g_object_unref(parser);
    return root;
}

char *herd_json_to_string(JsonNode *node, gsize *len)
{
    JsonGenerator *gen = json_generator_new();
    json_generator_set_root(gen, node);
    char *text = json_generator_to_data(gen, len);
    g_object_unref(gen);
    return text;
}

/* The letter of c's two-character escape (n for a newline), or 0 when it needs the
 * six-character form. */
static char json_short_escape(guchar c)
{
    switch (c) {
    case '"':
    case '\\':
        return (char)c;
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    default:
        return 0;
    }
}

void herd_json_append_escaped(GString *out, const char *s, gssize len)
{
    static const char hex[] = "0123456789abcdef";
    gsize n = len < 0 ? strlen(s) : (gsize)len;
    gsize run = 0; /* start of the characters not appended yet */
    for (gsize i = 0; i < n; i++) {
        guchar c = (guchar)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        g_string_append_len(out, s + run, (gssize)(i - run));
        run = i + 1;
        char letter = json_short_escape(c);
        if (letter) {
            char esc[2] = { '\\', letter };
            g_string_append_len(out, esc, 2);
        } else {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            g_string_append_len(out, esc, 6);
        }
    }
    g_string_append_len(out, s + run, (gssize)(n - run));
}

/* The member's node when it holds a plain value, else NULL. */
static JsonNode *member_value(JsonObject *o, const char *member)
{
    if (o == NULL)
        return NULL;
    JsonNode *n = json_object_get_member(o, member);
    return n && JSON_NODE_HOLDS_VALUE(n) ? n : NULL;
}

const char *herd_json_str(JsonObject *o, const char *member)
{
    JsonNode *n = member_value(o, member);
    return n && json_node_get_value_type(n) == G_TYPE_STRING ? json_node_get_string(n) : NULL;
}

gint64 herd_json_int(JsonObject *o, const char *member, gint64 dflt)
{
    JsonNode *n = member_value(o, member);
    return n && json_node_get_value_type(n) == G_TYPE_INT64 ? json_node_get_int(n) : dflt;
}

gboolean herd_json_bool(JsonObject *o, const char *member, gboolean dflt)
{
    JsonNode *n = member_value(o, member);
    return n && json_node_get_value_type(n) == G_TYPE_BOOLEAN ? json_node_get_boolean(n) : dflt;
}

/* Integers are numbers too: Python writes 5 for a float timeout of 5.0 only when the user
 * passed an int, and either means the same. */
double herd_json_double(JsonObject *o, const char *member, double dflt)
{
    JsonNode *n = member_value(o, member);
    if (n == NULL)
        return dflt;
    GType t = json_node_get_value_type(n);
    if (t == G_TYPE_DOUBLE)
        return json_node_get_double(n);
    if (t == G_TYPE_INT64)
        return (double)json_node_get_int(n);
    return dflt;
}

JsonArray *herd_json_array(JsonObject *o, const char *member)
{
    JsonNode *n = o ? json_object_get_member(o, member) : NULL;
    return n && JSON_NODE_HOLDS_ARRAY(n) ? json_node_get_array(n) : NULL;
}

JsonObject *herd_json_object(JsonObject *o, const char *member)
{
    JsonNode *n = o ? json_object_get_member(o, member) : NULL;
    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

/* ---- dates ---- */

/* The "YYYY-MM-DDTHH:MM:SS" part of the last second formatted by this thread: messages
 * are dated many times a second, and gmtime_r takes glibc's time-zone lock. */
#define ISO_SECONDS_LEN 19
static __thread gint64 iso_cached_secs = G_MININT64;
static __thread char iso_cached_text[ISO_SECONDS_LEN + 1];

void herd_iso_format(gint64 unix_usec, char buf[HERD_ISO_LEN])
{
    gint64 secs = unix_usec / G_USEC_PER_SEC;
    gint64 usec = unix_usec % G_USEC_PER_SEC;
    if (usec < 0) { /* floor division for dates before 1970 */
        usec += G_USEC_PER_SEC;
        secs--;
    }
    int n;
    if (secs == iso_cached_secs) {
        memcpy(buf, iso_cached_text, ISO_SECONDS_LEN);
        n = ISO_SECONDS_LEN;
    } else {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        n = snprintf(buf, HERD_ISO_LEN, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (n == ISO_SECONDS_LEN) { /* years 0..9999 */
            memcpy(iso_cached_text, buf, ISO_SECONDS_LEN);
            iso_cached_secs = secs;
        }
    }
    /* Python's isoformat() leaves the fraction out when it is zero. */
    if (usec != 0) {
        buf[n++] = '.';
        for (int i = 5; i >= 0; i--, usec /= 10)
            buf[n + i] = (char)('0' + usec % 10);
        n += 6;
    }
    buf[n++] = 'Z';
    buf[n] = '\0';
}

void herd_iso_now(char buf[HERD_ISO_LEN])
{
    herd_iso_format(g_get_real_time(), buf);
}

/* Read exactly `count` decimal digits at *p, advancing it. */
static gboolean read_digits(const char **p, int count, int *out)
{
    int v = 0;
    for (int i = 0; i < count; i++) {
        if (!g_ascii_isdigit((*p)[i]))
            return FALSE;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += count;
    *out = v;
    return TRUE;
}

static gboolean expect_char(const char **p, char c)
{
    if (**p != c)
        return FALSE;
    (*p)++;
    return TRUE;
}

/* Optional ".f" .. ".ffffff" (1 to 6 digits) as microseconds. More digits are refused:
 * the Python peers would leave such a string undecoded. */
static gboolean read_fraction(const char **p, int *usec)
{
    *usec = 0;
    if (**p != '.')
        return TRUE;
    (*p)++;
    int digits = 0;
    while (g_ascii_isdigit(**p) && digits < 7) {
        *usec = *usec * 10 + (**p - '0');
        (*p)++;
        digits++;
    }
    if (digits == 0 || digits > 6)
        return FALSE;
    for (; digits < 6; digits++)
        *usec *= 10;
    return TRUE;
}

/* Optional zone: "Z", "+hh:mm", "+hhmm", "-hh:mm", "-hhmm". *naive is set when absent. */
static gboolean read_zone(const char **p, int *offset_sec, gboolean *naive)
{
    *offset_sec = 0;
    *naive = FALSE;
    if (**p == '\0') {
        *naive = TRUE;
        return TRUE;
    }
    if (expect_char(p, 'Z'))
        return TRUE;
    int sign = **p == '+' ? 1 : **p == '-' ? -1 : 0;
    if (sign == 0)
        return FALSE;
    (*p)++;
    int hh, mm;
    if (!read_digits(p, 2, &hh))
        return FALSE;
    if (**p == ':')
        (*p)++;
    if (!read_digits(p, 2, &mm) || hh > 23 || mm > 59)
        return FALSE;
    *offset_sec = sign * (hh * 3600 + mm * 60);
    return TRUE;
}

gboolean herd_iso_parse(const char *s, gint64 *unix_usec)
{
    if (s == NULL)
        return FALSE;
    const char *p = s;
    int year, mon, day, hour, min, sec, usec, offset_sec;
    gboolean naive;
    if (!read_digits(&p, 4, &year) || !expect_char(&p, '-') || !read_digits(&p, 2, &mon) ||
        !expect_char(&p, '-') || !read_digits(&p, 2, &day) || !expect_char(&p, 'T') ||
        !read_digits(&p, 2, &hour) || !expect_char(&p, ':') || !read_digits(&p, 2, &min) ||
        !expect_char(&p, ':') || !read_digits(&p, 2, &sec) || !read_fraction(&p, &usec) ||
        !read_zone(&p, &offset_sec, &naive) || *p != '\0')
        return FALSE;
    if (sec > 59) /* Python's datetime has no leap seconds */
        return FALSE;

    gint64 secs;
    if (naive) {
        /* A date without a zone is local time, as the Python peers read it: GDateTime
         * knows the zone's rules (and validates the calendar). */
        GTimeZone *tz = g_time_zone_new_local();
        GDateTime *dt = g_date_time_new(tz, year, mon, day, hour, min, 0.0);
        g_time_zone_unref(tz);
        if (dt == NULL)
            return FALSE;
        secs = g_date_time_to_unix(dt) + sec;
        g_date_time_unref(dt);
    } else {
        /* The common case (peers write UTC) on the relay path: GDate validates the
         * calendar and counts the days without allocating. */
        if (year < 1 || !g_date_valid_dmy((GDateDay)day, (GDateMonth)mon, (GDateYear)year) || hour > 23 ||
            min > 59)
            return FALSE;
        GDate date;
        g_date_clear(&date, 1);
        g_date_set_dmy(&date, (GDateDay)day, (GDateMonth)mon, (GDateYear)year);
        const gint64 julian_1970_01_01 = 719163; /* GDate counts 0001-01-01 as day 1 */
        secs = ((gint64)g_date_get_julian(&date) - julian_1970_01_01) * 86400 + hour * 3600 + min * 60 + sec -
               offset_sec;
    }
    if (unix_usec)
        *unix_usec = secs * G_USEC_PER_SEC + usec;
    return TRUE;
}

/* ---- error content ---- */

JsonNode *herd_error_content(const char *ename, const char *evalue)
{
    if (ename == NULL)
        ename = "Exception";
    if (evalue == NULL)
        evalue = "";
    /* Python's formatted exception ends with the line "ename: evalue\n". */
    char *last_line = *evalue ? g_strdup_printf("%s: %s\n", ename, evalue) : g_strdup_printf("%s\n", ename);

    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "status");
    json_builder_add_string_value(b, "error");
    json_builder_set_member_name(b, "traceback");
    json_builder_begin_array(b);
    json_builder_add_string_value(b, last_line);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "ename");
    json_builder_add_string_value(b, ename);
    json_builder_set_member_name(b, "evalue");
    json_builder_add_string_value(b, evalue);
    json_builder_set_member_name(b, "engine_info");
    json_builder_begin_object(b);
    json_builder_end_object(b);
    json_builder_end_object(b);

    JsonNode *node = json_builder_get_root(b);
    g_object_unref(b);
    g_free(last_line);
    return node;
}

/* ---- fast member scan ---- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* Word-at-a-time byte tests: TRUE when some byte of w is zero, or below n (n <= 128).
 * Exact as yes/no answers; the scan only uses them to skip plain stretches. */
#define BYTES_ONES G_GUINT64_CONSTANT(0x0101010101010101)
#define BYTES_HIGHS G_GUINT64_CONSTANT(0x8080808080808080)
static inline gboolean word_has_zero(guint64 w)
{
    return ((w - BYTES_ONES) & ~w & BYTES_HIGHS) != 0;
}

static inline gboolean word_has_below(guint64 w, unsigned n)
{
    return ((w - BYTES_ONES * n) & ~w & BYTES_HIGHS) != 0;
}

/* Skip the characters of a string that need no attention (no quote, backslash or control
 * character) eight at a time: most of a message is such text. */
static const char *skip_plain_chars(const char *p, const char *end)
{
    while (end - p >= 8) {
        guint64 w;
        memcpy(&w, p, 8);
        if (word_has_zero(w ^ (BYTES_ONES * '"')) || word_has_zero(w ^ (BYTES_ONES * '\\')) ||
            word_has_below(w, 0x20))
            break;
        p += 8;
    }
    return p;
}

/* p at an opening quote; returns the position after the closing quote, or NULL. */
static const char *scan_string(const char *p, const char *end, gboolean *escaped)
{
    for (p = skip_plain_chars(p + 1, end); p < end; p++) {
        if (*p == '\\') {
            *escaped = TRUE;
            p++;
        } else if (*p == '"') {
            return p + 1;
        } else if ((guchar)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

/* p at the first character of a value; returns the position after it, or NULL. */
static const char *scan_value(const char *p, const char *end, HerdJsonKind *kind, gboolean *escaped)
{
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"':
        *kind = HERD_JSON_STRING;
        return scan_string(p, end, escaped);
    case '{':
    case '[': {
        *kind = *p == '{' ? HERD_JSON_OBJECT : HERD_JSON_ARRAY;
        int depth = 0;
        for (; p < end; p++) {
            if (*p == '"') {
                gboolean esc = FALSE;
                p = scan_string(p, end, &esc);
                if (!p)
                    return NULL;
                p--;
            } else if (*p == '{' || *p == '[') {
                if (++depth > JSON_MAX_DEPTH)
                    return NULL;
            } else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
        }
        return NULL;
    }
    case 't':
        *kind = HERD_JSON_TRUE;
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        *kind = HERD_JSON_FALSE;
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        *kind = HERD_JSON_NULL;
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        if (*p != '-' && !g_ascii_isdigit(*p))
            return NULL;
        *kind = HERD_JSON_NUMBER;
        while (p < end && (g_ascii_isdigit(*p) || *p == '-' || *p == '+' || *p == '.' || *p == 'e' || *p == 'E'))
            p++;
        return p;
    }
}

gboolean herd_json_scan(HerdBytes b, HerdJsonField *fields, guint n_fields)
{
    return herd_json_scan_count(b, fields, n_fields, NULL);
}

gboolean herd_json_scan_count(HerdBytes b, HerdJsonField *fields, guint n_fields, guint *n_members)
{
    guint count = 0;
    if (n_members)
        *n_members = 0;
    for (guint i = 0; i < n_fields; i++) {
        fields[i].kind = HERD_JSON_ABSENT;
        fields[i].value = NULL;
        fields[i].len = 0;
        fields[i].escaped = FALSE;
    }
    if (!b.data)
        return TRUE; /* NULL stands for {} */
    const char *p = b.data, *end = b.data + b.len;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return FALSE;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return skip_ws(p + 1, end) == end;
    for (;;) {
        if (p >= end || *p != '"')
            return FALSE;
        gboolean key_escaped = FALSE;
        const char *key = p + 1;
        p = scan_string(p, end, &key_escaped);
        if (!p)
            return FALSE;
        gsize key_len = (gsize)(p - 1 - key);
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return FALSE;
        p = skip_ws(p + 1, end);
        HerdJsonKind kind = HERD_JSON_ABSENT;
        gboolean escaped = FALSE;
        const char *value = p;
        p = scan_value(p, end, &kind, &escaped);
        if (!p)
            return FALSE;
        count++;
        for (guint i = 0; i < n_fields && !key_escaped; i++) {
            const char *name = fields[i].name; /* first byte first: most keys differ there */
            if (key_len > 0 && name[0] == key[0] && strncmp(name, key, key_len) == 0 && name[key_len] == '\0') {
                fields[i].kind = kind;
                fields[i].escaped = escaped;
                if (kind == HERD_JSON_STRING) {
                    fields[i].value = value + 1;
                    fields[i].len = (gsize)(p - value - 2);
                } else {
                    fields[i].value = value;
                    fields[i].len = (gsize)(p - value);
                }
            }
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            if (n_members)
                *n_members = count;
            return skip_ws(p + 1, end) == end;
        }
        return FALSE;
    }
}

char *herd_json_field_dup(const HerdJsonField *f)
{
    if (f->kind != HERD_JSON_STRING)
        return NULL;
    if (!f->escaped)
        return g_strndup(f->value, f->len);
    /* rare: let json-glib decode the escapes */
    g_autofree char *doc = g_strdup_printf("{\"v\":\"%.*s\"}", (int)f->len, f->value);
    JsonNode *n = herd_json_parse_object((HerdBytes){ doc, strlen(doc) }, NULL);
    char *out = n ? g_strdup(herd_json_str(json_node_get_object(n), "v")) : NULL;
    if (n)
        json_node_unref(n);
    return out;
}

const char *herd_json_field_str(const HerdJsonField *f, char *buf, gsize size)
{
    if (f->kind != HERD_JSON_STRING || f->escaped || f->len >= size)
        return NULL;
    memcpy(buf, f->value, f->len);
    buf[f->len] = '\0';
    return buf;
}
