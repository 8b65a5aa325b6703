"""Maps the design's top-level folders under the single ``stgrl`` import namespace.

``actors/`` imports as ``stgrl.actors``, ``learner/`` as ``stgrl.learner`` and so on, so that no
generic top-level module (``actors``, ``learner``) lands in a user's site-packages. Everything else
about the distribution lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

FOLDERS = ("transport", "actors", "rollout", "reward_service", "learner", "orchestration", "k8s")

packages = ["stgrl"]
package_dir = {"stgrl": "stgrl"}
for folder in FOLDERS:
    package_dir[f"stgrl.{folder}"] = folder
    packages.append(f"stgrl.{folder}")
    packages += [f"stgrl.{folder}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"stgrl.k8s": ["*.yaml", "*.json", "**/*.yaml", "**/*.json", "Dockerfile"]},
    include_package_data=True,
)
