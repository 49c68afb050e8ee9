/* herd — the broadcast scheduler: one request, one dispatch per target engine. */
#include "sched-harness.h"

#include <herd/config.h>

static Harness *new_broadcast(void)
{
    return harness_new(SCHED_PLUGIN_PATH, "broadcast", "broadcast", NULL);
}

static void test_descriptor(void)
{
    Harness *h = new_broadcast();
    g_assert_null(harness_scheme(h));
    harness_free(h);
}

static void test_dispatch_once_per_target(void)
{
    Harness *h = new_broadcast();
    harness_engines_up(h, 3);
    harness_request(h, "m", "{\"targets\": [[\"e2\", 2], [\"e0\", 0], [\"e1\", 1]], "
                            "\"is_broadcast\": true, \"is_coalescing\": false}");
    harness_expect(h, "dispatch m e2; dispatch m e0; dispatch m e1");
    harness_reply(h, "m", "e0", "ok");
    harness_reply(h, "m", "e1", "error");
    harness_expect(h, "deliver m ok@e0; deliver m error@e1");
    g_assert_false(harness_finished(h, "m"));
    harness_reply(h, "m", "e2", "ok");
    harness_expect(h, "deliver m ok@e2");
    g_assert_true(harness_finished(h, "m"));
    harness_free(h);
}

static void test_duplicate_targets_and_replies(void)
{
    Harness *h = new_broadcast();
    harness_engines_up(h, 2);
    harness_request(h, "m", "{\"targets\": [[\"e0\", 0], [\"e1\", 1], [\"e0\", 0]]}");
    harness_expect(h, "dispatch m e0; dispatch m e1");
    harness_reply(h, "m", "e0", "ok");
    harness_reply(h, "m", "e0", "ok"); /* a second answer from the same engine */
    harness_expect(h, "deliver m ok@e0");
    harness_reply(h, "m", "e1", "ok");
    harness_expect(h, "deliver m ok@e1");
    harness_free(h);
}

static void test_unknown_target_fails_before_dispatch(void)
{
    Harness *h = new_broadcast();
    harness_engine_up(h, "e0");
    harness_request(h, "m", "{\"targets\": [[\"e0\", 0], [\"nope\", 5]]}");
    harness_expect(h, "fail m EngineError: Engine 'nope' is not registered");
    harness_request(h, "n", "{\"targets\": []}");
    harness_request(h, "o", "{}");
    harness_request(h, "p", "{\"targets\": [[5, \"e0\"]]}");
    harness_expect(h, "fail n EngineError: broadcast request without targets; "
                      "fail o EngineError: broadcast request without targets; "
                      "fail p EngineError: broadcast target 0 is not [uuid, id]");
    harness_free(h);
}

static void test_engine_down_completes_waiting_requests(void)
{
    Harness *h = new_broadcast();
    harness_engines_up(h, 2);
    harness_request(h, "a", "{\"targets\": [[\"e0\", 0], [\"e1\", 1]], \"is_coalescing\": true}");
    harness_request(h, "b", "{\"targets\": [[\"e1\", 1]]}");
    harness_request(h, "c", "{\"targets\": [[\"e0\", 0], [\"e1\", 1]]}");
    harness_reply(h, "a", "e0", "ok");
    harness_reply(h, "c", "e1", "ok");
    harness_expect(h, "dispatch a e0; dispatch a e1; dispatch b e1; dispatch c e0; "
                      "dispatch c e1; deliver a ok@e0; deliver c ok@e1");
    harness_engine_down(h, "e1");
    /* c already had e1's answer: only a and b waited on it */
    harness_expect(h, "deliver a EngineError@e1; deliver b EngineError@e1");
    g_assert_true(harness_finished(h, "a"));
    g_assert_true(harness_finished(h, "b"));
    g_assert_false(harness_finished(h, "c"));
    harness_reply(h, "c", "e0", "ok");
    harness_expect(h, "deliver c ok@e0");
    harness_free(h);
}

static void test_late_reply_from_dead_engine_is_dropped(void)
{
    Harness *h = new_broadcast();
    harness_engines_up(h, 2);
    harness_request(h, "m", "{\"targets\": [[\"e0\", 0], [\"e1\", 1]]}");
    harness_engine_down(h, "e0");
    harness_reply(h, "m", "e0", "ok");
    harness_expect(h, "dispatch m e0; dispatch m e1; deliver m EngineError@e0");
    harness_reply(h, "m", "e1", "ok");
    harness_expect(h, "deliver m ok@e1");
    harness_free(h);
}

static void test_dispatch_failing_at_once(void)
{
    Harness *h = new_broadcast();
    harness_engines_up(h, 2);
    harness_set_unreachable(h, "e0", TRUE);
    /* The answer for e0 waits until every target was sent the request. */
    harness_request(h, "m", "{\"targets\": [[\"e0\", 0], [\"e1\", 1]]}");
    harness_expect(h, "dispatch m e0!; dispatch m e1; deliver m EngineError@e0");
    harness_reply(h, "m", "e1", "ok");
    harness_expect(h, "deliver m ok@e1");
    g_assert_true(harness_finished(h, "m"));
    harness_request(h, "n", "{\"targets\": [[\"e0\", 0]]}");
    harness_expect(h, "dispatch n e0!; deliver n EngineError@e0");
    g_assert_true(harness_finished(h, "n"));
    harness_free(h);
}

static void test_options(void)
{
    harness_assert_refused(SCHED_PLUGIN_PATH, "broadcast", "broadcast",
                           "[scheduler.broadcast]\nfanout=2\n", HERD_CONFIG_ERROR_UNKNOWN_KEY,
                           "'fanout'", NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sched/broadcast/descriptor", test_descriptor);
    g_test_add_func("/sched/broadcast/once-per-target", test_dispatch_once_per_target);
    g_test_add_func("/sched/broadcast/duplicates", test_duplicate_targets_and_replies);
    g_test_add_func("/sched/broadcast/unknown-target", test_unknown_target_fails_before_dispatch);
    g_test_add_func("/sched/broadcast/engine-down", test_engine_down_completes_waiting_requests);
    g_test_add_func("/sched/broadcast/late-reply-dropped",
                    test_late_reply_from_dead_engine_is_dropped);
    g_test_add_func("/sched/broadcast/dispatch-fails-at-once", test_dispatch_failing_at_once);
    g_test_add_func("/sched/broadcast/options", test_options);
    return g_test_run();
}
