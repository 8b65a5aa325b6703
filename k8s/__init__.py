"""KubeRay manifests, dashboards and the project image (data files; this module only locates them)."""

from pathlib import Path

MANIFEST_DIR = Path(__file__).resolve().parent
