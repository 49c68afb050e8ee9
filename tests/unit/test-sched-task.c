/* herd — the task scheduler: ipyparallel's load-balanced scheduling, driven by scripts.
 *
 * Engine order matters for the expected logs: a new engine goes to the front of the list
 * (least recently used), and an engine that gets a task moves to the back.
 */
#include "sched-harness.h"

#include <herd/config.h>

static Harness *new_task(const char *options)
{
    g_autofree char *conf = g_strdup_printf("[scheduler.task]\n%s\n", options ? options : "");
    return harness_new(SCHED_PLUGIN_PATH, "task", "task", conf);
}

/* ---- schemes ---------------------------------------------------------------------------- */

static void test_scheme_reported(void)
{
    Harness *h = new_task(NULL);
    g_assert_cmpstr(harness_scheme(h), ==, "leastload");
    harness_free(h);
    h = new_task("scheme=twobin");
    g_assert_cmpstr(harness_scheme(h), ==, "twobin");
    harness_free(h);
    /* pure (ipcontroller's ZMQ relay) rotates with no hwm */
    h = new_task("scheme=pure");
    g_assert_cmpstr(harness_scheme(h), ==, "pure");
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", "c", NULL);
    harness_expect(h, "dispatch a e1; dispatch b e0; dispatch c e1");
    harness_free(h);
}

static void test_leastload_picks_least_loaded(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 3);
    harness_requests(h, "a", "b", "c", "d", NULL);
    harness_expect(h, "dispatch a e2; dispatch b e1; dispatch c e0; dispatch d e2");
    harness_reply(h, "b", "e1", "ok");
    harness_expect(h, "deliver b ok@e1");
    /* loads: e1 0, e0 1, e2 2 */
    harness_request(h, "e", NULL);
    harness_expect(h, "dispatch e e1");
    /* loads in LRU order: e0 1, e2 2, e1 1: the least recently used of the least loaded */
    harness_request(h, "f", NULL);
    harness_expect(h, "dispatch f e0");
    harness_free(h);
}

static void test_lru_rotates_regardless_of_load(void)
{
    Harness *h = new_task("hwm=0\nscheme=lru");
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", NULL);
    harness_reply(h, "b", "e0", "ok");
    harness_expect(h, "dispatch a e1; dispatch b e0; deliver b ok@e0");
    /* e0 is idle and e1 busy, but e1 was assigned longest ago */
    harness_requests(h, "c", "d", "e", NULL);
    harness_expect(h, "dispatch c e1; dispatch d e0; dispatch e e1");
    harness_free(h);
}

static void test_random_schemes_stay_within_candidates(void)
{
    const char *schemes[] = {"plainrandom", "twobin", "weighted"};
    for (guint s = 0; s < G_N_ELEMENTS(schemes); s++) {
        g_autofree char *opts = g_strdup_printf("hwm=0\nscheme=%s", schemes[s]);
        Harness *h = new_task(opts);
        harness_engines_up(h, 3);
        guint used_e0 = 0, used_e2 = 0;
        for (int i = 0; i < 300; i++) {
            g_autofree char *id = g_strdup_printf("m%d", i);
            harness_request(h, id, "{\"targets\": [\"e0\", \"e2\"]}");
            g_autofree char *line = harness_take(h);
            g_autofree char *on_e0 = g_strdup_printf("dispatch %s e0", id);
            g_autofree char *on_e2 = g_strdup_printf("dispatch %s e2", id);
            if (g_str_equal(line, on_e0))
                used_e0++;
            else if (g_str_equal(line, on_e2))
                used_e2++;
            else
                g_error("%s: unexpected '%s'", schemes[s], line);
            harness_reply(h, id, g_str_equal(line, on_e0) ? "e0" : "e2", "ok");
            harness_discard(h);
        }
        g_assert_cmpuint(used_e0, >, 0);
        g_assert_cmpuint(used_e2, >, 0);
        harness_free(h);
    }
}

static void test_weighted_prefers_idle_engines(void)
{
    Harness *h = new_task("hwm=0\nscheme=weighted");
    harness_engines_up(h, 2);
    harness_request(h, "busy", "{\"targets\": [\"e1\"]}");
    harness_expect(h, "dispatch busy e1");
    /* An idle engine weighs a million times more than one with a task. */
    for (int i = 0; i < 100; i++) {
        g_autofree char *id = g_strdup_printf("m%d", i);
        g_autofree char *expect = g_strdup_printf("dispatch %s e0", id);
        harness_request(h, id, NULL);
        harness_expect(h, expect);
        harness_reply(h, id, "e0", "ok");
        harness_discard(h);
    }
    harness_free(h);
}

/* ---- hwm and queue order ---------------------------------------------------------------- */

static void test_hwm1_queues_hwm0_does_not(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_requests(h, "a", "b", "c", NULL);
    harness_expect(h, "dispatch a e0");
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "deliver a ok@e0; dispatch b e0");
    harness_reply(h, "b", "e0", "ok");
    harness_expect(h, "deliver b ok@e0; dispatch c e0");
    harness_free(h);

    h = new_task("hwm=0");
    harness_engines_up(h, 1);
    harness_requests(h, "a", "b", "c", NULL);
    harness_expect(h, "dispatch a e0; dispatch b e0; dispatch c e0");
    harness_free(h);
}

/* Jobs examined and skipped by a scan keep their places (7.1 reversed them). */
static void test_queue_stays_fifo_across_scans(void)
{
    Harness *h = new_task("scheme=lru");
    harness_engines_up(h, 2);
    harness_request(h, "t", NULL);
    harness_reply(h, "t", "e1", "ok");
    harness_requests(h, "L1", "L2", NULL);
    harness_expect(h, "dispatch t e1; deliver t ok@e1; dispatch L1 e0; dispatch L2 e1");
    harness_request(h, "F1", "{\"follow\": [\"t\"]}");
    harness_request(h, "F2", "{\"follow\": [\"t\"]}");
    harness_request(h, "F3", "{\"follow\": [\"t\"]}");
    harness_request(h, "G", NULL);
    harness_expect(h, "");
    /* e0 frees: the F jobs must wait for e1, G (behind them) may run on e0. */
    harness_reply(h, "L1", "e0", "ok");
    harness_expect(h, "deliver L1 ok@e0; dispatch G e0");
    harness_reply(h, "L2", "e1", "ok");
    harness_expect(h, "deliver L2 ok@e1; dispatch F1 e1");
    harness_reply(h, "F1", "e1", "ok");
    harness_expect(h, "deliver F1 ok@e1; dispatch F2 e1");
    harness_reply(h, "F2", "e1", "ok");
    harness_expect(h, "deliver F2 ok@e1; dispatch F3 e1");
    harness_free(h);
}

static void test_waits_for_an_engine(void)
{
    Harness *h = new_task(NULL);
    harness_requests(h, "a", "b", NULL);
    harness_expect(h, "");
    harness_engine_up(h, "e0");
    harness_expect(h, "dispatch a e0");
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch b e1");
    harness_free(h);
}

/* ---- targets ---------------------------------------------------------------------------- */

static void test_targets_restrict_placement(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 3);
    harness_request(h, "a", "{\"targets\": [\"e1\"]}");
    harness_request(h, "b", "{\"targets\": [\"e1\"]}");
    harness_request(h, "c", "{\"targets\": [\"e0\", \"e2\"]}");
    harness_request(h, "d", "{\"targets\": [\"e0\", \"e2\"]}");
    harness_request(h, "e", "{\"targets\": []}");
    harness_expect(h, "dispatch a e1; dispatch b e1; dispatch c e2; dispatch d e0; "
                      "dispatch e e2");
    harness_free(h);
}

static void test_impossible_targets(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_request(h, "a", "{\"targets\": [\"nope\"]}");
    harness_expect(h, "fail a ImpossibleDependency");
    /* A target that is registered but busy is waited for... */
    harness_request(h, "b", NULL);
    harness_request(h, "c", "{\"targets\": [\"e0\"]}");
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch b e0");
    /* ...until it goes away. */
    harness_engine_down(h, "e0");
    harness_expect(h, "fail c ImpossibleDependency");
    harness_free(h);
}

/* ---- after / follow --------------------------------------------------------------------- */

static void test_after_chain_runs_in_order(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 2);
    harness_request(h, "a", NULL);
    harness_request(h, "b", "{\"after\": [\"a\"]}");
    harness_request(h, "c", "{\"after\": [\"b\"], \"follow\": []}");
    harness_expect(h, "dispatch a e1");
    harness_reply(h, "a", "e1", "ok");
    harness_expect(h, "deliver a ok@e1; dispatch b e0");
    harness_reply(h, "b", "e0", "ok");
    harness_expect(h, "deliver b ok@e0; dispatch c e1");
    /* after an id that already completed: runs at once */
    harness_request(h, "d", "{\"after\": [\"a\", \"b\"]}");
    harness_expect(h, "dispatch d e0");
    harness_free(h);
}

static void test_after_failure_flags(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 1);
    const char *on_failure = "{\"after\": {\"dependencies\": [\"%s\"], \"all\": true, "
                             "\"success\": false, \"failure\": true}}";
    harness_request(h, "x", NULL);
    g_autofree char *y_md = g_strdup_printf(on_failure, "x");
    harness_request(h, "y", y_md);
    harness_request(h, "x2", NULL);
    g_autofree char *z_md = g_strdup_printf(on_failure, "x2");
    harness_request(h, "z", z_md);
    harness_expect(h, "dispatch x e0; dispatch x2 e0");
    harness_reply(h, "x", "e0", "error");
    harness_expect(h, "deliver x error@e0; dispatch y e0");
    harness_reply(h, "x2", "e0", "ok");
    harness_expect(h, "deliver x2 ok@e0; fail z ImpossibleDependency");
    /* success=true and failure=true: any outcome will do */
    harness_request(h, "w", "{\"after\": {\"dependencies\": [\"x\", \"x2\"], "
                            "\"success\": true, \"failure\": true}}");
    harness_expect(h, "dispatch w e0");
    harness_free(h);
}

static void test_failed_dependency_cascades(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 1);
    harness_request(h, "p", NULL);
    harness_request(h, "q", "{\"after\": [\"p\"]}");
    harness_request(h, "r", "{\"after\": [\"q\"]}");
    harness_request(h, "s", "{\"follow\": [\"r\"]}");
    harness_reply(h, "p", "e0", "error");
    harness_expect(h, "dispatch p e0; deliver p error@e0; fail q ImpossibleDependency; "
                      "fail r ImpossibleDependency; fail s ImpossibleDependency");
    /* depending on a failed task is impossible from the start */
    harness_request(h, "t", "{\"after\": [\"p\"]}");
    harness_expect(h, "fail t ImpossibleDependency");
    harness_free(h);
}

static void test_after_any(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 1);
    harness_requests(h, "u1", "u2", NULL);
    harness_request(h, "s", "{\"after\": {\"dependencies\": [\"u1\", \"u2\"], \"all\": false}}");
    harness_reply(h, "u1", "e0", "error");
    harness_expect(h, "dispatch u1 e0; dispatch u2 e0; deliver u1 error@e0");
    harness_reply(h, "u2", "e0", "ok");
    harness_expect(h, "deliver u2 ok@e0; dispatch s e0");
    /* all of the any-set failed: impossible */
    harness_requests(h, "v1", "v2", NULL);
    harness_request(h, "t", "{\"after\": {\"dependencies\": [\"v1\", \"v2\"], \"all\": false}}");
    harness_reply(h, "v1", "e0", "error");
    harness_reply(h, "v2", "e0", "error");
    harness_expect(h, "dispatch v1 e0; dispatch v2 e0; deliver v1 error@e0; "
                      "deliver v2 error@e0; fail t ImpossibleDependency");
    harness_free(h);
}

static void test_follow_runs_where_dependency_ran(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 3);
    harness_request(h, "f", NULL);
    harness_reply(h, "f", "e2", "ok");
    harness_expect(h, "dispatch f e2; deliver f ok@e2");
    /* e2 was just used, yet every follower goes there, one at a time (hwm 1) */
    harness_request(h, "g1", "{\"follow\": [\"f\"]}");
    harness_request(h, "g2", "{\"follow\": [\"f\"]}");
    harness_request(h, "other", NULL);
    harness_expect(h, "dispatch g1 e2; dispatch other e1");
    harness_reply(h, "g1", "e2", "ok");
    harness_expect(h, "deliver g1 ok@e2; dispatch g2 e2");
    harness_free(h);
}

static void test_follow_on_two_engines_is_impossible(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", NULL);
    harness_reply(h, "a", "e1", "ok");
    harness_reply(h, "b", "e0", "ok");
    harness_expect(h, "dispatch a e1; dispatch b e0; deliver a ok@e1; deliver b ok@e0");
    harness_request(h, "c", "{\"follow\": [\"a\", \"b\"]}");
    harness_expect(h, "fail c ImpossibleDependency");
    /* with all=false either engine will do */
    harness_request(h, "d", "{\"follow\": {\"dependencies\": [\"a\", \"b\"], \"all\": false}}");
    harness_expect(h, "dispatch d e1");
    harness_free(h);
}

static void test_invalid_dependencies(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_request(h, "a", "{\"after\": [\"12345\"]}");
    harness_request(h, "b", "{\"follow\": [\"12345\"]}");
    harness_request(h, "c", "{\"after\": \"c\"}");
    harness_request(h, "d", "{\"after\": [1, 2]}");
    harness_request(h, "e", "{\"follow\": {\"dependencies\": [], \"success\": false, "
                            "\"failure\": false}}");
    harness_request(h, "f", "{\"targets\": \"e0\"}");
    harness_expect(h, "fail a InvalidDependency; fail b InvalidDependency; "
                      "fail c InvalidDependency; fail d InvalidDependency; "
                      "fail e InvalidDependency; fail f InvalidDependency");
    /* and they count as failed for whoever depends on them */
    harness_request(h, "g", "{\"after\": {\"dependencies\": [\"a\"], \"failure\": true}}");
    harness_expect(h, "dispatch g e0");
    harness_free(h);
}

/* ---- timeouts --------------------------------------------------------------------------- */

static void test_timeout_only_covers_waiting(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_request(h, "busy", NULL);
    harness_request(h, "w", "{\"timeout\": 0.5}");
    harness_request(h, "r", "{\"timeout\": 1}");
    harness_advance(h, 499);
    harness_expect(h, "dispatch busy e0");
    harness_advance(h, 1);
    harness_expect(h, "fail w TaskTimeout");
    harness_reply(h, "busy", "e0", "ok");
    harness_expect(h, "deliver busy ok@e0; dispatch r e0");
    /* running past its timeout is fine */
    harness_advance(h, 5000);
    harness_expect(h, "");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_reply(h, "r", "e0", "ok");
    harness_expect(h, "deliver r ok@e0");
    harness_free(h);
}

static void test_timeout_while_waiting_for_dependency(void)
{
    Harness *h = new_task("hwm=0");
    harness_engines_up(h, 1);
    harness_request(h, "a", NULL);
    harness_request(h, "b", "{\"after\": [\"a\"], \"timeout\": 0.01}");
    harness_request(h, "c", "{\"after\": [\"b\"]}");
    harness_advance(h, 10);
    harness_expect(h, "dispatch a e0; fail b TaskTimeout; fail c ImpossibleDependency");
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "deliver a ok@e0");
    harness_free(h);
}

/* ---- retries and unmet dependencies ------------------------------------------------------ */

static void test_retries_blacklist_then_return_engine_error(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 3);
    harness_request(h, "r", "{\"retries\": 2}");
    harness_reply(h, "r", "e2", "error");
    harness_reply(h, "r", "e1", "error");
    harness_reply(h, "r", "e0", "error");
    /* r+1 attempts on distinct engines, then the engine's own error */
    harness_expect(h, "dispatch r e2; dispatch r e1; dispatch r e0; deliver r error@e0");
    harness_request(h, "s", "{\"retries\": 1}");
    harness_reply(h, "s", "e2", "error");
    harness_reply(h, "s", "e1", "ok");
    harness_expect(h, "dispatch s e2; dispatch s e1; deliver s ok@e1");
    harness_free(h);
}

static void test_retries_exhaust_engines_then_timeout(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 3);
    harness_request(h, "r", "{\"retries\": 3, \"timeout\": 0.1}");
    harness_reply(h, "r", "e2", "error");
    harness_reply(h, "r", "e1", "error");
    harness_reply(h, "r", "e0", "error");
    harness_expect(h, "dispatch r e2; dispatch r e1; dispatch r e0");
    /* every engine is blacklisted: it waits, and the queue timeout fires */
    harness_advance(h, 100);
    harness_expect(h, "fail r TaskTimeout");
    harness_free(h);
}

static void test_retry_waits_for_a_free_engine(void)
{
    Harness *h = new_task("scheme=lru");
    harness_engines_up(h, 2);
    harness_request(h, "r", "{\"retries\": 1}");
    harness_request(h, "busy", NULL);
    harness_reply(h, "r", "e1", "error");
    /* e0 is busy: the retry waits (with a fresh place at the end of the queue) */
    harness_expect(h, "dispatch r e1; dispatch busy e0");
    harness_reply(h, "busy", "e0", "ok");
    harness_expect(h, "deliver busy ok@e0; dispatch r e0");
    harness_free(h);
}

static void test_unmet_dependencies_go_elsewhere(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 2);
    harness_request(h, "a", NULL);
    harness_reply_unmet(h, "a", "e1");
    harness_expect(h, "dispatch a e1; dispatch a e0");
    harness_reply_unmet(h, "a", "e0");
    harness_expect(h, ""); /* declined everywhere: waits, nothing forwarded */
    harness_engine_up(h, "e2");
    harness_expect(h, "dispatch a e2");
    /* retries are not consumed by unmet dependencies */
    harness_reply(h, "a", "e2", "error");
    harness_expect(h, "deliver a error@e2");

    harness_request(h, "t", "{\"targets\": [\"e0\", \"e1\"]}");
    harness_reply_unmet(h, "t", "e1");
    harness_reply_unmet(h, "t", "e0");
    harness_expect(h, "dispatch t e1; dispatch t e0; fail t ImpossibleDependency");
    harness_free(h);
}

/* ---- engine death ----------------------------------------------------------------------- */

static void test_engine_death_without_retries(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", NULL);
    harness_expect(h, "dispatch a e1; dispatch b e0");
    harness_engine_down(h, "e1");
    harness_request(h, "c", NULL);
    harness_advance(h, 4999);
    harness_expect(h, ""); /* results may still come in */
    harness_advance(h, 1);
    harness_expect(h, "deliver a EngineError@e1");
    harness_reply(h, "b", "e0", "ok");
    harness_expect(h, "deliver b ok@e0; dispatch c e0");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_free(h);
}

static void test_engine_death_with_retries(void)
{
    Harness *h = new_task("stranded_delay_ms=200");
    harness_engines_up(h, 2);
    harness_request(h, "a", "{\"retries\": 1}");
    harness_request(h, "b", "{\"retries\": 1, \"targets\": [\"e1\"]}");
    harness_expect(h, "dispatch a e1");
    harness_engine_down(h, "e1");
    harness_expect(h, "fail b ImpossibleDependency");
    harness_advance(h, 200);
    harness_expect(h, "dispatch a e0");
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "deliver a ok@e0");
    harness_free(h);
}

static void test_result_in_transit_beats_the_stranded_delay(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_request(h, "a", "{\"retries\": 5}");
    harness_request(h, "b", NULL);
    harness_engine_down(h, "e0");
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "dispatch a e0; deliver a ok@e0");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_advance(h, 10000);
    harness_expect(h, "");
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch b e1");
    harness_free(h);
}

static void test_stale_reply_is_ignored(void)
{
    Harness *h = new_task("stranded_delay_ms=100");
    harness_engines_up(h, 2);
    harness_request(h, "a", "{\"retries\": 1}");
    harness_engine_down(h, "e1");
    harness_advance(h, 100);
    harness_expect(h, "dispatch a e1; dispatch a e0");
    /* the dead engine's result arrives after the job moved on */
    harness_reply(h, "a", "e1", "ok");
    harness_expect(h, "");
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "deliver a ok@e0");
    harness_free(h);
}

static void test_dispatch_failing_at_once(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_requests(h, "a", "b", NULL);
    harness_request(h, "c", "{\"retries\": 1}");
    harness_set_unreachable(h, "e0", TRUE);
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "dispatch a e0; deliver a ok@e0; dispatch b e0!; "
                      "deliver b EngineError@e0; dispatch c e0!");
    /* c is blacklisted on e0 and waits for another engine */
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch c e1");
    harness_free(h);
}

/* ---- scale ------------------------------------------------------------------------------ */

static void test_long_failure_cascade(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 1);
    harness_request(h, "j0", NULL);
    for (int i = 1; i < 20000; i++) {
        g_autofree char *id = g_strdup_printf("j%d", i);
        g_autofree char *md = g_strdup_printf("{\"after\": [\"j%d\"]}", i - 1);
        harness_request(h, id, md);
    }
    harness_discard(h);
    harness_reply(h, "j0", "e0", "error");
    g_assert_true(harness_finished(h, "j19999"));
    harness_free(h);
}

static void test_many_queued_tasks(void)
{
    Harness *h = new_task(NULL);
    harness_engines_up(h, 4);
    const int n = 20000;
    harness_numbered_requests(h, "t", 0, n);
    for (int i = 0; i < n; i++) {
        g_autofree char *id = g_strdup_printf("t%d", i);
        g_autofree char *engine = g_strdup_printf("e%d", 3 - i % 4);
        harness_reply(h, id, engine, "ok");
    }
    g_assert_cmpuint(harness_dispatch_count(h), ==, n);
    g_assert_true(harness_finished(h, "t19999"));
    harness_free(h);
}

/* Run n independent tasks one after the other on e0; returns the time it took (ms). */
static gint64 run_independent_tasks(Harness *h, int n)
{
    gint64 start = g_get_monotonic_time();
    for (int i = 0; i < n; i++) {
        g_autofree char *id = g_strdup_printf("f%d", i);
        harness_request(h, id, NULL);
        harness_reply(h, id, "e0", "ok");
    }
    harness_discard(h);
    return (g_get_monotonic_time() - start) / 1000;
}

/* Tasks blocked on a dependency are not re-examined each time an engine frees up: that
 * would make every completion cost as much as the number of blocked tasks. Compared with
 * the same work without blocked tasks, so that a slow machine does not matter. */
static void test_blocked_tasks_do_not_slow_down_others(void)
{
    const int n = 20000;
    Harness *h = new_task(NULL);
    harness_engines_up(h, 2);
    harness_request(h, "long", NULL);
    gint64 baseline_ms = run_independent_tasks(h, n);
    harness_free(h);

    h = new_task(NULL);
    harness_engines_up(h, 2);
    harness_request(h, "long", NULL);
    for (int i = 0; i < n; i++) {
        g_autofree char *id = g_strdup_printf("b%d", i);
        harness_request(h, id, "{\"after\": [\"long\"]}");
    }
    gint64 blocked_ms = run_independent_tasks(h, n);
    g_assert_true(harness_finished(h, "f19999"));
    /* quadratic work would be thousands of times slower */
    g_assert_cmpint(blocked_ms, <, 10 * baseline_ms + 500);
    harness_reply(h, "long", "e1", "ok");
    g_autofree char *log = harness_take(h);
    g_assert_true(g_str_has_prefix(log, "deliver long ok@e1; dispatch b0 e"));
    harness_free(h);
}

static void test_history_limit_forgets_oldest(void)
{
    Harness *h = new_task("history_limit=2");
    harness_engines_up(h, 1);
    const char *ids[] = {"a", "b", "c"};
    for (guint i = 0; i < G_N_ELEMENTS(ids); i++) {
        harness_request(h, ids[i], NULL);
        harness_reply(h, ids[i], "e0", "ok");
    }
    harness_discard(h);
    harness_request(h, "d", "{\"after\": [\"a\"]}");
    harness_expect(h, "fail d InvalidDependency");
    harness_request(h, "e", "{\"follow\": [\"c\"]}");
    harness_expect(h, "dispatch e e0");
    harness_free(h);
}

/* ---- options ---------------------------------------------------------------------------- */

static void test_options(void)
{
    const HarnessRefusal cases[] = {
        {"[scheduler.task]\nretries=2\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "'retries'"},
        {"[scheduler.task]\nscheme=Least\n", HERD_CONFIG_ERROR_BAD_VALUE, "'Least'"},
        {"[scheduler.task]\nhwm=x\n", HERD_CONFIG_ERROR_BAD_VALUE, "'x'"},
        {"[scheduler.task]\nhistory_limit=0\n", HERD_CONFIG_ERROR_BAD_VALUE, "history_limit"},
        {"[scheduler.task]\nstranded_delay_ms=-5\n", HERD_CONFIG_ERROR_BAD_VALUE, "'-5'"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++)
        harness_assert_refused(SCHED_PLUGIN_PATH, "task", "task", cases[i].conf, cases[i].code,
                               cases[i].mentions, "[scheduler.task]", NULL);
    Harness *h = new_task("plugin=task\nscheme=weighted\nhwm=4\nstranded_delay_ms=0\n"
                          "history_limit=10");
    g_assert_cmpstr(harness_scheme(h), ==, "weighted");
    harness_free(h);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sched/task/scheme-reported", test_scheme_reported);
    g_test_add_func("/sched/task/leastload", test_leastload_picks_least_loaded);
    g_test_add_func("/sched/task/lru", test_lru_rotates_regardless_of_load);
    g_test_add_func("/sched/task/random-within-candidates",
                    test_random_schemes_stay_within_candidates);
    g_test_add_func("/sched/task/weighted-prefers-idle", test_weighted_prefers_idle_engines);
    g_test_add_func("/sched/task/hwm1-vs-hwm0", test_hwm1_queues_hwm0_does_not);
    g_test_add_func("/sched/task/queue-fifo", test_queue_stays_fifo_across_scans);
    g_test_add_func("/sched/task/waits-for-engine", test_waits_for_an_engine);
    g_test_add_func("/sched/task/targets", test_targets_restrict_placement);
    g_test_add_func("/sched/task/impossible-targets", test_impossible_targets);
    g_test_add_func("/sched/task/after-chain", test_after_chain_runs_in_order);
    g_test_add_func("/sched/task/after-failure-flags", test_after_failure_flags);
    g_test_add_func("/sched/task/failure-cascade", test_failed_dependency_cascades);
    g_test_add_func("/sched/task/after-any", test_after_any);
    g_test_add_func("/sched/task/follow", test_follow_runs_where_dependency_ran);
    g_test_add_func("/sched/task/follow-two-engines", test_follow_on_two_engines_is_impossible);
    g_test_add_func("/sched/task/invalid-dependency", test_invalid_dependencies);
    g_test_add_func("/sched/task/timeout", test_timeout_only_covers_waiting);
    g_test_add_func("/sched/task/timeout-waiting-dependency",
                    test_timeout_while_waiting_for_dependency);
    g_test_add_func("/sched/task/retries", test_retries_blacklist_then_return_engine_error);
    g_test_add_func("/sched/task/retries-then-timeout", test_retries_exhaust_engines_then_timeout);
    g_test_add_func("/sched/task/retry-waits", test_retry_waits_for_a_free_engine);
    g_test_add_func("/sched/task/unmet-dependencies", test_unmet_dependencies_go_elsewhere);
    g_test_add_func("/sched/task/engine-death", test_engine_death_without_retries);
    g_test_add_func("/sched/task/engine-death-retries", test_engine_death_with_retries);
    g_test_add_func("/sched/task/result-in-transit",
                    test_result_in_transit_beats_the_stranded_delay);
    g_test_add_func("/sched/task/stale-reply", test_stale_reply_is_ignored);
    g_test_add_func("/sched/task/dispatch-fails-at-once", test_dispatch_failing_at_once);
    g_test_add_func("/sched/task/long-cascade", test_long_failure_cascade);
    g_test_add_func("/sched/task/many-queued", test_many_queued_tasks);
    g_test_add_func("/sched/task/blocked-tasks-cost-nothing",
                    test_blocked_tasks_do_not_slow_down_others);
    g_test_add_func("/sched/task/history-limit", test_history_limit_forgets_oldest);
    g_test_add_func("/sched/task/options", test_options);
    return g_test_run();
}
