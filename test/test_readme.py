"""README.md's library example, executed as written on real frames: every frame is integrated.

(The example once integrated 1 of 60 frames with pose_source track and 0 with external: the
system defaulted to realtime mode and ignored the frames' own poses.)
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    text = README.read_text()
    section = text.split("## As a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def frames(redkitchen):
    from neural_mapping.datasets import open_dataset
    ds = open_dataset(redkitchen, max_frames=60)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("pose_source", ["as written", "external"])
def test_readme_library_example_maps_every_frame(frames, pose_source, tmp_path, monkeypatch):
    code = _library_example()
    assert "system.submit(frame)" in code and "system.mesh()" in code
    if pose_source != "as written":
        code, n = re.subn(r'"pose_source": "\w+"', f'"pose_source": "{pose_source}"', code)
        assert n == 1
    monkeypatch.chdir(tmp_path)  # the example saves map.pt
    scope = {"frames": frames}
    exec(compile(code, str(README), "exec"), scope)
    system, mesh = scope["system"], scope["mesh"]
    st = system.stats()
    assert st["frames_integrated"] == len(frames) == 60, st
    assert not any(k.startswith("dropped") and v for k, v in st.items() if isinstance(v, int)), st
    assert mesh.num_triangles > 10_000
    assert scope["snap"].frames_integrated == 60
    assert (tmp_path / "map.pt").stat().st_size > 0
