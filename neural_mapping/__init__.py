"""neural_mapping: real-time dense 3D mapping for RGB-D cameras.

The core (everything outside ``neural_mapping.ros``) never imports rclpy or any
``*_msgs`` package, so it runs as a plain library: offline on datasets, on bags,
or inside the ROS 2 node.
"""

__version__ = "0.1.0"
