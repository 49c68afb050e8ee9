/* herd — the lb scheduler: plain load balancing with a scheme, hwm and a FIFO queue. */
#include "sched-harness.h"

#include <string.h>

#include <herd/config.h>

static Harness *new_lb(const char *options)
{
    g_autofree char *conf = g_strdup_printf("[scheduler.task]\nplugin=lb\n%s\n", options);
    return harness_new(SCHED_PLUGIN_PATH, "lb", "task", conf);
}

static void test_scheme_reported(void)
{
    Harness *h = new_lb("");
    g_assert_cmpstr(harness_scheme(h), ==, "leastload");
    harness_free(h);
    h = new_lb("scheme=lru");
    g_assert_cmpstr(harness_scheme(h), ==, "lru");
    harness_free(h);
}

static void test_hwm1_queues_fifo(void)
{
    Harness *h = new_lb("");
    harness_engines_up(h, 2);
    harness_numbered_requests(h, "m", 1, 5);
    /* The newest engine is the least recently used one. */
    harness_expect(h, "dispatch m1 e1; dispatch m2 e0");
    harness_reply(h, "m2", "e0", "ok");
    harness_expect(h, "deliver m2 ok@e0; dispatch m3 e0");
    harness_reply(h, "m1", "e1", "error");
    harness_expect(h, "deliver m1 error@e1; dispatch m4 e1");
    harness_reply(h, "m4", "e1", "ok");
    harness_expect(h, "deliver m4 ok@e1; dispatch m5 e1");
    harness_reply(h, "m3", "e0", "ok");
    harness_reply(h, "m5", "e1", "ok");
    harness_expect(h, "deliver m3 ok@e0; deliver m5 ok@e1");
    harness_free(h);
}

static void test_hwm0_sends_everything_spread_by_load(void)
{
    Harness *h = new_lb("hwm=0");
    harness_engines_up(h, 2);
    harness_numbered_requests(h, "m", 1, 4);
    harness_expect(h, "dispatch m1 e1; dispatch m2 e0; dispatch m3 e1; dispatch m4 e0");
    harness_reply(h, "m2", "e0", "ok");
    harness_request(h, "m5", NULL);
    harness_expect(h, "deliver m2 ok@e0; dispatch m5 e0");
    harness_free(h);
}

static void test_hwm2_fills_each_engine_to_two(void)
{
    Harness *h = new_lb("hwm=2\nscheme=lru");
    harness_engines_up(h, 2);
    harness_numbered_requests(h, "m", 1, 5);
    harness_expect(h, "dispatch m1 e1; dispatch m2 e0; dispatch m3 e1; dispatch m4 e0");
    harness_reply(h, "m1", "e1", "ok");
    harness_expect(h, "deliver m1 ok@e1; dispatch m5 e1");
    harness_free(h);
}

static void test_waits_for_first_engine(void)
{
    Harness *h = new_lb("");
    harness_requests(h, "m1", "m2", NULL);
    harness_expect(h, "");
    harness_engine_up(h, "e0");
    harness_expect(h, "dispatch m1 e0");
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch m2 e1");
    harness_free(h);
}

static void test_metadata_is_ignored(void)
{
    Harness *h = new_lb("");
    harness_engine_up(h, "e0");
    harness_request(h, "m1",
                    "{\"targets\": [\"elsewhere\"], \"after\": [\"unknown\"], \"retries\": 3}");
    harness_expect(h, "dispatch m1 e0");
    harness_reply(h, "m1", "e0", "error");
    harness_expect(h, "deliver m1 error@e0"); /* no retry */
    harness_free(h);
}

static void test_leastload_and_lru(void)
{
    Harness *h = new_lb("hwm=0");
    harness_engines_up(h, 3);
    harness_requests(h, "a", "b", "c", NULL);
    harness_expect(h, "dispatch a e2; dispatch b e1; dispatch c e0");
    harness_reply(h, "b", "e1", "ok");
    harness_discard(h);
    /* Loads in LRU order: e2=1, e1=0, e0=1: leastload takes the idle one. */
    harness_request(h, "d", NULL);
    harness_expect(h, "dispatch d e1");
    harness_free(h);

    h = new_lb("hwm=0\nscheme=lru");
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", NULL);
    harness_reply(h, "b", "e0", "ok");
    harness_discard(h);
    /* lru ignores load: e1 was assigned longest ago. */
    harness_request(h, "c", NULL);
    harness_expect(h, "dispatch c e1");
    harness_free(h);
}

static void test_random_schemes_use_several_engines(void)
{
    const char *schemes[] = {"plainrandom", "twobin", "weighted"};
    for (guint s = 0; s < G_N_ELEMENTS(schemes); s++) {
        g_autofree char *opts = g_strdup_printf("hwm=0\nscheme=%s", schemes[s]);
        Harness *h = new_lb(opts);
        harness_engines_up(h, 3);
        GHashTable *used = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        for (int i = 0; i < 200; i++) {
            g_autofree char *id = g_strdup_printf("m%d", i);
            harness_request(h, id, NULL);
            g_autofree char *line = harness_take(h);
            g_autofree char *prefix = g_strdup_printf("dispatch %s ", id);
            g_assert_true(g_str_has_prefix(line, prefix));
            const char *engine = line + strlen(prefix);
            g_assert_true(g_str_equal(engine, "e0") || g_str_equal(engine, "e1") ||
                          g_str_equal(engine, "e2"));
            g_hash_table_add(used, g_strdup(engine));
            harness_reply(h, id, engine, "ok");
            harness_discard(h);
        }
        g_assert_cmpuint(g_hash_table_size(used), >, 1);
        g_hash_table_destroy(used);
        harness_free(h);
    }
}

static void test_stranded_jobs_answered_after_delay(void)
{
    Harness *h = new_lb("hwm=0\nstranded_delay_ms=100");
    harness_engines_up(h, 2);
    harness_request(h, "a", NULL); /* e1 */
    harness_request(h, "b", NULL); /* e0 */
    harness_request(h, "c", NULL); /* e1 */
    harness_request(h, "d", NULL); /* e0 */
    harness_expect(h, "dispatch a e1; dispatch b e0; dispatch c e1; dispatch d e0");
    harness_engine_down(h, "e0");
    harness_request(h, "e", NULL);
    harness_expect(h, "dispatch e e1"); /* the dead engine gets nothing new */
    harness_advance(h, 99);
    harness_expect(h, "");
    /* A result still in transit is delivered as usual. */
    harness_reply(h, "d", "e0", "ok");
    harness_expect(h, "deliver d ok@e0");
    harness_advance(h, 1);
    harness_expect(h, "deliver b EngineError@e0");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_free(h);
}

static void test_stranded_timer_dropped_when_all_answered(void)
{
    Harness *h = new_lb("stranded_delay_ms=100");
    harness_engine_up(h, "e0");
    harness_requests(h, "a", "b", NULL);
    harness_engine_down(h, "e0");
    g_assert_cmpuint(harness_live_timers(h), ==, 1);
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "dispatch a e0; deliver a ok@e0");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    /* b still waits for an engine. */
    harness_engine_up(h, "e1");
    harness_expect(h, "dispatch b e1");
    harness_free(h);
}

static void test_engine_down_with_nothing_in_flight(void)
{
    Harness *h = new_lb("");
    harness_engines_up(h, 2);
    harness_engine_down(h, "e1");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_requests(h, "a", "b", NULL);
    harness_expect(h, "dispatch a e0");
    harness_free(h);
}

static void test_dispatch_failing_at_once(void)
{
    Harness *h = new_lb("");
    harness_engine_up(h, "e0");
    harness_requests(h, "a", "b", "c", NULL);
    harness_set_unreachable(h, "e0", TRUE);
    harness_reply(h, "a", "e0", "ok");
    harness_expect(h, "dispatch a e0; deliver a ok@e0; dispatch b e0!; deliver b EngineError@e0; "
                      "dispatch c e0!; deliver c EngineError@e0");
    harness_free(h);
}

static void test_pure_rotates_without_hwm(void)
{
    Harness *h = new_lb("scheme=pure\nhwm=1");
    g_assert_cmpstr(harness_scheme(h), ==, "pure");
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", "c", NULL);
    harness_expect(h, "dispatch a e1; dispatch b e0; dispatch c e1");
    harness_free(h);
}

static void test_options(void)
{
    const HarnessRefusal cases[] = {
        {"[scheduler.task]\nfoo=1\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "'foo'"},
        {"[scheduler.task]\nretries=1\n", HERD_CONFIG_ERROR_UNKNOWN_KEY, "'retries'"},
        {"[scheduler.task]\nhwm=-1\n", HERD_CONFIG_ERROR_BAD_VALUE, "'-1'"},
        {"[scheduler.task]\nhwm=lots\n", HERD_CONFIG_ERROR_BAD_VALUE, "hwm"},
        {"[scheduler.task]\nscheme=random\n", HERD_CONFIG_ERROR_BAD_VALUE, "'random'"},
        {"[scheduler.task]\nstranded_delay_ms=1.5\n", HERD_CONFIG_ERROR_BAD_VALUE,
         "stranded_delay_ms"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++)
        harness_assert_refused(SCHED_PLUGIN_PATH, "lb", "task", cases[i].conf, cases[i].code,
                               cases[i].mentions, NULL);
    /* Other channels' groups are not this instance's business. */
    Harness *h = harness_new(SCHED_PLUGIN_PATH, "lb", "task", "[scheduler.mux]\nfoo=1\n");
    harness_free(h);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sched/lb/scheme-reported", test_scheme_reported);
    g_test_add_func("/sched/lb/hwm1-fifo", test_hwm1_queues_fifo);
    g_test_add_func("/sched/lb/hwm0-unlimited", test_hwm0_sends_everything_spread_by_load);
    g_test_add_func("/sched/lb/hwm2", test_hwm2_fills_each_engine_to_two);
    g_test_add_func("/sched/lb/waits-for-engine", test_waits_for_first_engine);
    g_test_add_func("/sched/lb/metadata-ignored", test_metadata_is_ignored);
    g_test_add_func("/sched/lb/leastload-and-lru", test_leastload_and_lru);
    g_test_add_func("/sched/lb/random-schemes", test_random_schemes_use_several_engines);
    g_test_add_func("/sched/lb/stranded-after-delay", test_stranded_jobs_answered_after_delay);
    g_test_add_func("/sched/lb/stranded-timer-dropped",
                    test_stranded_timer_dropped_when_all_answered);
    g_test_add_func("/sched/lb/engine-down-idle", test_engine_down_with_nothing_in_flight);
    g_test_add_func("/sched/lb/dispatch-fails-at-once", test_dispatch_failing_at_once);
    g_test_add_func("/sched/lb/pure", test_pure_rotates_without_hwm);
    g_test_add_func("/sched/lb/options", test_options);
    return g_test_run();
}
