# A shim: the build logic lives in build.py (loaded by path, never imported as
# `build`, which is also the name of PyPA's build frontend).
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent / "build.py"), run_name="datago_build")["setup_package"]()
