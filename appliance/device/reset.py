"""Factory reset: the default config, and nothing kept of what the device learned.

SPEC: "keeps nothing but the image". The config file goes back to the defaults (written
atomically, its mode kept) and its last-known-good copy goes; the state directory is
emptied (secrets.json with the password hash, tokens and playback key; anything else
kept there) but for the device's own access point password, which belongs to the
device like its serial number (it is on its label); recordings go, wherever they are.
"""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

from appliance.config.load import dump, save_atomic
from appliance.config.schema import Config
from appliance.device.hotspot import PASSWORD_FILE
from appliance.record.recorder import PREFIX as RECORDING_PREFIX

log = logging.getLogger(__name__)

KEEP = frozenset({PASSWORD_FILE})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def factory_reset(config_path: Path | None, state_dir: Path, recordings_dir: Path | None,
                  ) -> list[Path]:
    """Reset; returns what was removed or rewritten. OSError when something could not be."""
    done: list[Path] = []
    if config_path is not None and config_path.exists():
        mode = stat.S_IMODE(config_path.stat().st_mode)
        save_atomic(config_path, dump(Config()), mode=mode)
        done.append(config_path)
        last_good = config_path.with_name(config_path.name + ".last-good")
        if last_good.exists():
            last_good.unlink()
            done.append(last_good)
    if recordings_dir is not None and recordings_dir.is_dir():
        # A directory of the user's choosing may hold other files: only ours go.
        for path in sorted(recordings_dir.glob(f"{RECORDING_PREFIX}*")):
            _remove(path)
            done.append(path)
    if state_dir.is_dir():
        for path in sorted(state_dir.iterdir()):
            if path.name not in KEEP and path != config_path:
                _remove(path)
                done.append(path)
    log.warning("factory reset: removed or reset %s", ", ".join(map(str, done)) or "nothing")
    return done
