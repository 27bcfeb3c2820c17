"""A folder on this machine (a plain path or file://), through zarr's LocalStore."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ...errors import LogitcacheError
from ..location import Location, buffer_of, check_key


class LocalLocation(Location):
    backend = "local"

    def child(self, name: str) -> Location:
        return type(self)("file", str(Path(self.path) / name), str(Path(self.url) / name), self.options)

    def zarr_store(self, read_only: bool = True):
        from zarr.storage import LocalStore

        return LocalStore(self.path, read_only=read_only)

    @contextlib.contextmanager
    def errors(self):
        try:
            yield
        except PermissionError as exc:
            raise LogitcacheError(f"{self.url}: access denied ({exc})") from None

    def check_reachable(self) -> None:
        return None

    def check_no_links(self) -> None:
        root = Path(self.path)
        for folder, names, files in os.walk(root):  # os.walk does not descend into linked folders
            for name in sorted(names + files):
                if (Path(folder) / name).is_symlink():
                    raise LogitcacheError(f"{Path(folder) / name} is a symbolic link inside {self.url}; not written "
                                          "through (remove it, or choose another destination)")

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (Path(self.path) / check_key(self, key)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """zarr's LocalStore.set_if_not_exists (a temp file moved in only where the key is absent) is silent
        when the key exists: the object is read back to tell our claim from an existing one."""
        self._run(self.zarr_store(read_only=False).set_if_not_exists(check_key(self, key), buffer_of(data)))
        return self.read_bytes(key) == data

    def sizes(self) -> dict[str, int]:
        root = Path(self.path)
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
                if p.is_file() and not p.name.endswith(".partial")}

    def exists(self) -> bool:
        return Path(self.path).exists()

    def delete_all(self) -> None:
        path = Path(self.path)
        (path / "zarr.json").unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
