"""neural_mapping: real-time dense 3D mapping for RGB-D cameras.

The core (everything outside ``neural_mapping.ros``) never imports rclpy or any
``*_msgs`` package, so it runs as a plain library: offline on datasets, on bags,
or inside the ROS 2 node.
"""

import os as _os

# torch and Open3D both bring an OpenMP pool; with the default (active) wait policy each
# spins while the other works and the two starve each other on a 2-core machine
# (measured: a 38 ms mesh extraction took 1.3 s after an Open3D call). Must be set
# before either library is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
