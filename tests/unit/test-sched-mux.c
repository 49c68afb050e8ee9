/* herd — the mux scheduler: requests go to the engine the client named. */
#include "sched-harness.h"

#include <herd/config.h>

static Harness *new_mux(void)
{
    return harness_new(SCHED_PLUGIN_PATH, "mux", "mux", NULL);
}

static void test_descriptor(void)
{
    Harness *h = new_mux();
    g_assert_cmpint(harness_descriptor(h)->kind, ==, HERD_PLUGIN_SCHEDULER);
    g_assert_null(harness_scheme(h));
    harness_free(h);
}

static void test_routes_to_named_engine(void)
{
    Harness *h = new_mux();
    harness_engines_up(h, 2);
    harness_request_to(h, "m1", "e1");
    harness_request_to(h, "m2", "e0");
    harness_request_to(h, "m3", "e1");
    harness_expect(h, "dispatch m1 e1; dispatch m2 e0; dispatch m3 e1");
    harness_reply(h, "m3", "e1", "ok");
    harness_reply(h, "m2", "e0", "error");
    harness_reply(h, "m1", "e1", "ok");
    harness_expect(h, "deliver m3 ok@e1; deliver m2 error@e0; deliver m1 ok@e1");
    harness_free(h);
}

static void test_unknown_engine_fails_at_once(void)
{
    Harness *h = new_mux();
    harness_engine_up(h, "e0");
    harness_request_to(h, "m1", "nope");
    harness_expect(h, "fail m1 EngineError: Engine 'nope' is not registered");
    g_assert_true(harness_finished(h, "m1"));
    harness_request_to(h, "m2", NULL);
    harness_expect(h, "fail m2 EngineError: Engine '' is not registered");
    harness_engine_down(h, "e0");
    harness_request_to(h, "m3", "e0");
    harness_expect(h, "fail m3 EngineError: Engine 'e0' is not registered");
    harness_free(h);
}

static void test_engine_down_answers_its_pending_requests(void)
{
    Harness *h = new_mux();
    harness_engines_up(h, 2);
    harness_request_to(h, "a", "e0");
    harness_request_to(h, "b", "e1");
    harness_request_to(h, "c", "e0");
    harness_request_to(h, "d", "e0");
    harness_reply(h, "c", "e0", "ok");
    harness_expect(h, "dispatch a e0; dispatch b e1; dispatch c e0; dispatch d e0; "
                      "deliver c ok@e0");
    harness_engine_down(h, "e0");
    /* In submission order, and nothing else touched. */
    harness_expect(h, "deliver a EngineError@e0; deliver d EngineError@e0");
    g_assert_true(harness_finished(h, "a"));
    g_assert_false(harness_finished(h, "b"));
    harness_reply(h, "b", "e1", "ok");
    harness_expect(h, "deliver b ok@e1");
    g_assert_cmpuint(harness_live_timers(h), ==, 0);
    harness_free(h);
}

static void test_engine_down_without_work_is_quiet(void)
{
    Harness *h = new_mux();
    harness_engine_up(h, "e0");
    harness_engine_down(h, "e0");
    harness_expect(h, "");
    harness_engine_up(h, "e2");
    harness_request_to(h, "m1", "e2");
    harness_expect(h, "dispatch m1 e2");
    harness_free(h); /* destroy with work in flight must not leak or touch the job */
}

static void test_options(void)
{
    Harness *h = harness_new(SCHED_PLUGIN_PATH, "mux", "mux", "[scheduler.mux]\nplugin=mux\n");
    harness_free(h);
    harness_assert_refused(SCHED_PLUGIN_PATH, "mux", "mux", "[scheduler.mux]\nhwm=2\n",
                           HERD_CONFIG_ERROR_UNKNOWN_KEY, "'hwm'", "[scheduler.mux]", NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sched/mux/descriptor", test_descriptor);
    g_test_add_func("/sched/mux/routes-to-named-engine", test_routes_to_named_engine);
    g_test_add_func("/sched/mux/unknown-engine-fails", test_unknown_engine_fails_at_once);
    g_test_add_func("/sched/mux/engine-down-answers-pending",
                    test_engine_down_answers_its_pending_requests);
    g_test_add_func("/sched/mux/engine-down-without-work", test_engine_down_without_work_is_quiet);
    g_test_add_func("/sched/mux/options", test_options);
    return g_test_run();
}
