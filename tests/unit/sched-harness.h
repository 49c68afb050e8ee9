/* herd — a scripted fake scheduler host for the scheduler plugin tests.
 *
 * It loads a built scheduler module through its exported descriptor (so the export is
 * tested too), plays the core's part with no sockets and a fake clock, and records every
 * decision the plugin makes as one line of a log:
 *
 *   "dispatch <msg_id> <engine>"         host->dispatch
 *   "deliver <msg_id> <status>@<engine>"  host->deliver of an engine's reply
 *   "deliver <msg_id> EngineError@<engine>"  host->deliver of a host->engine_error reply
 *   "fail <msg_id> <ename>[: <evalue>]"   host->fail
 *
 * Tests script events (engines up/down, requests, replies, time passing) and compare the
 * log with what a user expects. Misuse of the host API (dispatching a finished job, to a
 * dead engine, finishing a job twice, leaking a kept reply) fails the test on the spot.
 */
#pragma once

#include <glib.h>
#include <herd/scheduler.h>

typedef struct Harness Harness;

/* Load the module at `plugin_path`, check its descriptor is a scheduler named `name`, and
 * create an instance for `channel` with options from the key-file text `conf` (may be
 * NULL); the group read is "scheduler.<channel>". Asserts that creation succeeds. */
Harness *harness_new(const char *plugin_path, const char *name, const char *channel,
                     const char *conf);
/* The same, but returns the creation error (NULL if creation succeeded). */
GError *harness_create_error(const char *plugin_path, const char *name, const char *channel,
                             const char *conf);
/* A configuration a scheduler must refuse: the HERD_CONFIG_ERROR code, and a string the
 * message must mention. */
typedef struct HarnessRefusal {
    const char *conf;
    int code;
    const char *mentions;
} HarnessRefusal;

/* Assert that creating the instance fails with the HERD_CONFIG_ERROR `code` and a message
 * that mentions each string given after it (the list ends with NULL). */
void harness_assert_refused(const char *plugin_path, const char *name, const char *channel,
                            const char *conf, int code, ...) G_GNUC_NULL_TERMINATED;
/* Destroy the instance, check no reply or timer was leaked, unload the module. */
void harness_free(Harness *h);

const HerdPluginDescriptor *harness_descriptor(Harness *h);
/* The plugin's scheme op (NULL if it has none or it returned NULL). */
const char *harness_scheme(Harness *h);

void harness_engine_up(Harness *h, const char *uuid);
void harness_engine_down(Harness *h, const char *uuid);
/* Engines "e0" .. "e<n-1>", up in that order: the newest is the least recently used. */
void harness_engines_up(Harness *h, int n);
/* Make dispatches to this engine fail the way the core's do when a send fails: the host
 * answers at once, from inside host->dispatch, by calling the plugin's reply op with a
 * synthesized EngineError (logged as "dispatch <msg_id> <engine>!"). */
void harness_set_unreachable(Harness *h, const char *uuid, gboolean unreachable);

/* A request with the given metadata JSON object text (NULL = "{}"). */
void harness_request(Harness *h, const char *msg_id, const char *metadata_json);
/* Requests without metadata, in the order given (the list ends with NULL). */
void harness_requests(Harness *h, const char *msg_id, ...) G_GNUC_NULL_TERMINATED;
/* n requests without metadata, named <prefix><first> .. <prefix><first + n - 1>. */
void harness_numbered_requests(Harness *h, const char *prefix, int first, int n);
/* A request naming its engine (the mux/control channels). */
void harness_request_to(Harness *h, const char *msg_id, const char *target_uuid);

/* The engine's reply to msg_id with metadata.status = status. An engine that is down
 * answers with reply->engine = NULL, as the core does. */
void harness_reply(Harness *h, const char *msg_id, const char *engine_uuid, const char *status);
/* A reply with metadata.dependencies_met = false (status "error"). */
void harness_reply_unmet(Harness *h, const char *msg_id, const char *engine_uuid);

/* Move the fake clock forward, firing due timers in order. */
void harness_advance(Harness *h, guint ms);
/* Timers armed and neither fired nor cancelled. */
guint harness_live_timers(Harness *h);

/* The log lines recorded since the last call, joined by "; " ("" if none). Caller frees. */
char *harness_take(Harness *h);
/* Forget the log lines recorded so far. */
void harness_discard(Harness *h);
gboolean harness_finished(Harness *h, const char *msg_id);
/* Number of dispatch calls so far. */
guint harness_dispatch_count(Harness *h);

/* Assert the log since the last check equals `expected`. */
#define harness_expect(h, expected)                                                                \
    do {                                                                                           \
        g_autofree char *harness_log_ = harness_take(h);                                           \
        g_assert_cmpstr(harness_log_, ==, (expected));                                             \
    } while (0)
