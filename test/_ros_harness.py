"""In-process DDS helpers for the ROS tests: an isolated rclpy context (random domain) with
one node and an executor, and spinning until a condition holds."""

import random
import time
from contextlib import contextmanager


def spin_until(ex, cond, timeout: float = 60.0) -> bool:
    """Spin ``ex`` until ``cond()`` is true or ``timeout`` s passed; the final ``cond()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        ex.spin_once(timeout_sec=0.02)
    return cond()


@contextmanager
def ros_node(name: str):
    """``(node, executor)`` in a fresh context on a random ROS domain (100-200), torn down after."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=random.randint(100, 200))
    node = rclpy.create_node(name, context=ctx, start_parameter_services=False, enable_rosout=False)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        yield node, ex
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
