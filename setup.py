from glob import glob

from setuptools import find_packages, setup

package_name = "neural_mapping"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/config/sensors", glob("config/sensors/*.yaml")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    # the live web view (neural_mapping/view/): rerun-sdk 0.41 needs numpy >= 2, so it is optional
    extras_require={"view": ["rerun-sdk==0.41.0"]},
    zip_safe=True,
    maintainer="neural_mapping developers",
    maintainer_email="dev@neural-mapping.invalid",
    description="Real-time dense 3D mapping (torch voxel-block TSDF) for ROS 2, CPU or GPU.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "neural-mapping = neural_mapping.app.cli:main",
            "mapping_node = neural_mapping.ros.node:main",
        ],
    },
)
