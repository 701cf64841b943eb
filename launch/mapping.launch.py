"""Live mapping: ``ros2 launch neural_mapping mapping.launch.py sensor:=realsense_d435``.

Loads ``config/default.yaml`` (every parameter, generated from the typed config)
then ``config/sensors/<sensor>.yaml`` (sensor-specific overrides), then the
optional ``config:=<file>`` of the user, and remaps the node's relative inputs
(``depth/image``, ``depth/camera_info``, ``color/image``, ``pose``) to the
sensor driver's topics.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "neural_mapping"

# Input remappings per sensor (the node's relative input names -> driver topics).
SENSOR_REMAPPINGS = {
    # realsense2_camera with align_depth.enable:=true (depth registered to color)
    "realsense_d435": {
        "depth/image": "/camera/camera/aligned_depth_to_color/image_raw",
        "depth/camera_info": "/camera/camera/aligned_depth_to_color/camera_info",
        "color/image": "/camera/camera/color/image_raw",
        "pose": "/odom",
    },
    # azure_kinect_ros_driver with depth_mode registered to rgb (depth_to_rgb)
    "azure_kinect": {
        "depth/image": "/depth_to_rgb/image_raw",
        "depth/camera_info": "/rgb/camera_info",
        "color/image": "/rgb/image_raw",
        "pose": "/odom",
    },
    # bags written by `neural-mapping make-bag` from TUM / 7-Scenes style datasets
    "dataset": {
        "depth/image": "/camera/depth/image_raw",
        "depth/camera_info": "/camera/depth/camera_info",
        "color/image": "/camera/color/image_raw",
        "pose": "/camera/pose",
    },
}


def _node(context, *args, **kwargs):
    share = get_package_share_directory(PACKAGE)
    sensor = LaunchConfiguration("sensor").perform(context)
    if sensor not in SENSOR_REMAPPINGS:
        raise RuntimeError(f"unknown sensor {sensor!r}; known: {sorted(SENSOR_REMAPPINGS)}")
    params = [os.path.join(share, "config", "default.yaml"),
              os.path.join(share, "config", "sensors", f"{sensor}.yaml")]
    user = LaunchConfiguration("config").perform(context)
    if user:
        params.append(user)
    params.append({"use_sim_time": LaunchConfiguration("use_sim_time").perform(context) == "true"})
    return [Node(
        package=PACKAGE, executable="mapping_node", name="neural_mapping",
        namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
        parameters=params, remappings=list(SENSOR_REMAPPINGS[sensor].items()))]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("sensor", default_value="realsense_d435",
                              description="Sensor preset: config/sensors/<sensor>.yaml and its topic "
                                          f"remappings ({', '.join(sorted(SENSOR_REMAPPINGS))})."),
        DeclareLaunchArgument("config", default_value="",
                              description="Extra parameter YAML applied last (overrides)."),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (true when replaying a bag)."),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Start RViz with rviz/mapping.rviz."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace for the node (its outputs move with it)."),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=os.path.join(share, "config", "fastdds_shm.xml"),
                              description="FASTDDS_DEFAULT_PROFILES_FILE for the processes of this "
                                          "launch (shared memory for camera-rate images; give the "
                                          "camera driver the same file). Empty: Fast DDS defaults."),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        OpaqueFunction(function=_node),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", os.path.join(share, "rviz", "mapping.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
