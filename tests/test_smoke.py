from wqsim import audit, generate


def test_generated_tasks_are_all_done_once_by_one_worker(make_queue, make_worker):
    q = make_queue()
    generate(q, 20, duration_ms=0)
    make_worker().run()
    result = audit(q)
    assert (result.generated, result.done, result.lost, result.completed_twice) == (20, 20, 0, 0)
    assert result.clean
