"""Replay a bag into the node: ``ros2 launch neural_mapping replay.launch.py bag:=<path>``.

Runs ``ros2 bag play --clock <bag>`` and the node with ``use_sim_time``, the
``dataset`` sensor preset (topics written by ``neural-mapping make-bag``) unless
``sensor:=`` says otherwise.  Offline and without ROS, ``neural-mapping replay
<bag>`` gives the same map deterministically.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PACKAGE = "neural_mapping"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder or file to play."),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate."),
        DeclareLaunchArgument("sensor", default_value="dataset",
                              description="Sensor preset (topic remappings) of the bag."),
        DeclareLaunchArgument("config", default_value="",
                              description="Extra parameter YAML applied last (overrides)."),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz."),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "mapping.launch.py")),
            launch_arguments={"sensor": LaunchConfiguration("sensor"),
                              "config": LaunchConfiguration("config"),
                              "rviz": LaunchConfiguration("rviz"),
                              "use_sim_time": "true"}.items()),
        ExecuteProcess(cmd=["ros2", "bag", "play", "--clock", "--rate", LaunchConfiguration("rate"),
                            LaunchConfiguration("bag")], output="screen"),
    ])
