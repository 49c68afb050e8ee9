/* herd — the example scheduler of docs/schedulers.md loads and schedules. */
#include "sched-harness.h"

#include <herd/config.h>

static Harness *new_roundrobin(void)
{
    return harness_new(SCHED_PLUGIN_PATH, "roundrobin", "task", "[scheduler]\ntask=roundrobin\n");
}

static void test_takes_turns(void)
{
    Harness *h = new_roundrobin();
    harness_request(h, "a", NULL);
    harness_expect(h, ""); /* no engine yet: it waits */
    harness_engine_up(h, "e0");
    harness_expect(h, "dispatch a e0");
    harness_engine_up(h, "e1");
    harness_requests(h, "b", "c", "d", NULL);
    harness_expect(h, "dispatch b e0; dispatch c e1; dispatch d e0");
    harness_reply(h, "c", "e0", "ok");
    harness_expect(h, "deliver c ok@e0");
    g_assert_null(harness_scheme(h));
    harness_free(h);
}

static void test_engine_down_answers_for_it(void)
{
    Harness *h = new_roundrobin();
    harness_engines_up(h, 2);
    harness_requests(h, "a", "b", NULL);
    harness_engine_down(h, "e0");
    harness_expect(h, "dispatch a e0; dispatch b e1; deliver a EngineError@e0");
    harness_request(h, "c", NULL);
    harness_expect(h, "dispatch c e1");
    harness_free(h);
}

static void test_refuses_options(void)
{
    harness_assert_refused(SCHED_PLUGIN_PATH, "roundrobin", "task",
                           "[scheduler.task]\nplugin=roundrobin\nhwm=1\n",
                           HERD_CONFIG_ERROR_UNKNOWN_KEY, "'hwm'", NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sched/example/takes-turns", test_takes_turns);
    g_test_add_func("/sched/example/engine-down", test_engine_down_answers_for_it);
    g_test_add_func("/sched/example/refuses-options", test_refuses_options);
    return g_test_run();
}
