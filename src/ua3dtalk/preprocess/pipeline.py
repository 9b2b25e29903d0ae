"""The preprocessing pipeline: a talking-head video → a dataset directory (DESIGN §5.1).

Steps (in order; ``--steps`` runs a subset):

==============  ===========================================================================
``decode``      frames at 25 fps → ``ori_imgs/<i>.jpg`` (square crop around the face, resized to
                ``size``), audio → ``aud.wav`` (16 kHz mono, exactly 640 samples per frame)
``landmarks``   68 iBUG landmarks per frame → ``ori_imgs/<i>.lms`` (tracked, gaps ≤ ``max_gap``
                interpolated, temporally smoothed); raw track in ``preprocess/landmarks.npz``
``parsing``     label maps → ``parsing/<i>.png`` (landmarks + background subtraction, or a BiSeNet
                checkpoint); background statistics in ``preprocess/background.npz``
``background``  ``bc.jpg`` from the pixels never covered by the person; ``gt_imgs/<i>.jpg`` (person
                over ``bc.jpg``), ``torso_imgs/<i>.png`` (RGBA neck + torso layer)
``pose``        per-frame cameras → ``transforms_train.json`` / ``transforms_val.json`` (written last
                among the required files: a directory is a dataset only once this step is done): the
                landmark fit refined by head points tracked through the clip (``track_points``);
                per-frame reprojection errors in ``preprocess/reprojection.csv``
``blink``       eye aspect ratio → ``au.csv`` (OpenFace header, column ``AU45_r``)
``expr``        landmark expression coefficients → ``expr.npy`` [N, K] (the E-FID extractor)
``features``    audio features ``aud_<name>.npy`` (:mod:`ua3dtalk.data.audio` extractors)
==============  ===========================================================================

**Resume.** Each step ends by writing ``preprocess/<step>.json`` (after flushing its files to
disk): the parameters it ran with, its frame count and the tokens of the step records it used. A
step is skipped when its record exists, matches the current parameters and upstream records, and
its outputs are all present; otherwise it runs again (``force=True`` reruns every selected step).
Every file is written to a temporary name and renamed into place, so an interrupted run leaves no
half-written file under a final name. Running any of ``decode``, ``landmarks``, ``parsing`` or
``background`` first removes ``transforms_*.json`` (and the outputs of the steps that depend on
it), so a directory never looks like a valid dataset while its files disagree.

The step graph, options and records are in :mod:`ua3dtalk.preprocess.config`; the per-frame work
(worker processes, chunk functions, file writing) in :mod:`ua3dtalk.preprocess.workers`.

**Errors** are :class:`~ua3dtalk.preprocess.errors.PreprocessError` with the file and step; the
outputs of the steps completed before are kept.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..utils.io import atomic_path, atomic_save_npy, atomic_write_json, atomic_write_text
from . import video as V
from .config import (
    DEPS,
    SINGLE_FILE_SUFFIXES,
    SOURCE_RECORD,
    STATE_DIR,
    STEP_OUTPUTS,
    STEPS,
    PreprocessConfig,
    _downstream,
    video_identity,
)
from .errors import PreprocessError
from .workers import (
    _background_chunk,
    _Bar,
    _flush,
    _frame_files_ok,
    _landmarks_chunk,
    _parsing_chunk,
    _pool,
    _stale_frames,
    run_chunks,
    write_bytes,
)


def _write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    write_bytes(path, V.encode_jpeg(img, quality))


class Preprocessor:
    """Runs the pipeline on one video into ``out`` (see the module doc).

    Args:
        video: input video file (any container/codec ffmpeg reads).
        out: output dataset directory (created).
        config: :class:`PreprocessConfig`.
        shared_crop: a :class:`~ua3dtalk.preprocess.video.Crop` to use instead of finding one
            (one crop for all clips of a subject, e.g. MEAD).
        log: callable for messages (default: print to stderr).
    """

    def __init__(self, video: str | Path, out: str | Path, config: Optional[PreprocessConfig] = None, *,
                 shared_crop: Optional[V.Crop] = None, log: Optional[Callable[[str], None]] = None):
        self.video = Path(video)
        self.out = Path(out)
        self.cfg = config or PreprocessConfig()
        self.shared_crop = shared_crop
        self.state = self.out / STATE_DIR
        self._log = log
        self.messages: list[str] = []
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        self.messages.append(msg)
        if self._log is not None:
            self._log(msg)
        else:
            import sys

            print(f"[ua3dtalk-preprocess] {msg}", file=sys.stderr)

    def record_path(self, step: str) -> Path:
        return self.state / f"{step}.json"

    def record(self, step: str) -> Optional[dict]:
        try:
            return json.loads(self.record_path(step).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, step: str) -> bool:
        """The step's record matches the current options and upstream records, and its outputs exist."""
        r = self.record(step)
        if r is None or r.get("params") != self.cfg.step_params(step):
            return False
        for dep in DEPS[step]:
            d = self.record(dep)
            if d is None or r.get("deps", {}).get(dep) != d.get("token") or not self.is_done(dep):
                return False
        n = r.get("n_frames")
        for d, suf in STEP_OUTPUTS[step]:
            if suf in SINGLE_FILE_SUFFIXES:
                if not (self.out / d / suf).is_file():
                    return False
            elif not isinstance(n, int) or not _frame_files_ok(self.out / d, suf, n):
                return False
        if step == "features":
            return all((self.out / f).is_file() for f in r.get("files", []))
        return True

    def _invalidate(self, step: str) -> None:
        """Before ``step`` runs: drop its record and the records/single-file outputs downstream."""
        self.record_path(step).unlink(missing_ok=True)
        down = _downstream(step)
        if step in ("decode", "landmarks", "parsing", "background") and "pose" not in down:
            down.append("pose")
        for s in down:
            self.record_path(s).unlink(missing_ok=True)
            for d, suf in STEP_OUTPUTS[s]:
                if suf in SINGLE_FILE_SUFFIXES and d != STATE_DIR:
                    (self.out / d / suf).unlink(missing_ok=True)

    def _finish(self, step: str, n_frames: int, **extra) -> dict:
        _flush()
        rec = {"step": step, "params": self.cfg.step_params(step), "n_frames": int(n_frames),
               "deps": {d: (self.record(d) or {}).get("token") for d in DEPS[step]},
               "token": uuid.uuid4().hex, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
        atomic_write_json(self.record_path(step), rec)
        return rec

    def _record_source(self) -> None:
        """``preprocess/source.json``: the video this directory is being made from (size and SHA-1)."""
        src = {"video": video_identity(self.video)}
        path = self.state / SOURCE_RECORD
        try:
            same = json.loads(path.read_text()) == src
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            atomic_write_json(path, src)

    def n_frames(self) -> int:
        r = self.record("decode")
        if r is None:
            raise PreprocessError("the decode step has not completed", self.out, step="decode")
        return int(r["n_frames"])

    def frame(self, i: int) -> np.ndarray:
        return V.decode_image(self.out / "ori_imgs" / f"{i}.jpg")

    def landmarks_array(self) -> np.ndarray:
        """[N,68,2] final (gap-filled, smoothed) landmarks of the clip."""
        with np.load(self.state / "landmarks.npz") as z:
            return z["lms"].astype(np.float64)

    # ---------------------------------------------------------------- run
    def run(self, steps: Optional[Sequence[str]] = None, *, force: bool = False) -> dict:
        """Run ``steps`` (default: all) in pipeline order; returns a report dict (also written to
        ``preprocess/report.json``). Raises :class:`PreprocessError` on bad input."""
        steps = list(STEPS) if steps is None else list(steps)
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise ValueError(f"unknown step(s) {', '.join(bad)}; steps are {', '.join(STEPS)}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        ran, skipped = [], []
        # a step outside ``steps`` that was complete and is invalidated by a rerun of one it reads runs again too,
        # so that ``--steps parsing`` leaves a complete dataset, not one without its cameras
        was_done = {s: self.is_done(s) for s in STEPS if s not in steps}
        for step in STEPS:
            if step not in steps:
                if not (was_done[step] and not self.is_done(step)):
                    continue
                self.log(f"{step}: run again as well (it reads what {', '.join(ran)} rewrote)")
            elif not force and self.is_done(step):
                skipped.append(step)
                continue
            missing = [d for d in DEPS[step] if not self.is_done(d)]
            if missing:
                raise PreprocessError(f"step '{step}' needs the outputs of {', '.join(missing)}, which are missing or "
                                      f"out of date; run those steps too (e.g. --steps {','.join(missing + [step])})",
                                      self.out, step=step)
            self._invalidate(step)
            t0 = time.perf_counter()
            try:
                getattr(self, f"step_{step}")()
            except PreprocessError as e:
                e.step = e.step or step
                raise
            self.timings[step] = time.perf_counter() - t0
            ran.append(step)
        report = {"video": str(self.video), "out": str(self.out), "ran": ran, "skipped": skipped,
                  "seconds": {k: round(v, 3) for k, v in self.timings.items()}, "messages": self.messages}
        prev = {}
        with contextlib.suppress(Exception):
            prev = json.loads((self.state / "report.json").read_text())
        report["steps"] = {**prev.get("steps", {}), **{s: self.record(s) for s in ran}}
        atomic_write_json(self.state / "report.json", report)
        return report

    # ---------------------------------------------------------------- steps
    def step_decode(self) -> None:
        cfg = self.cfg
        info = V.probe(self.video)
        self._record_source()  # a readable video: from here on a killed run is still this video's output
        if info.duration and info.expected_frames < cfg.min_frames:
            raise PreprocessError(f"video too short: {info.duration:.2f} s = {info.expected_frames} frames at 25 fps, "
                                  f"at least {cfg.min_frames} frames are needed (--min-frames)", self.video)
        audio_src = Path(cfg.audio) if cfg.audio else self.video
        if cfg.audio:
            if not audio_src.is_file():
                raise PreprocessError("audio file does not exist", audio_src)
        elif not info.has_audio:
            raise PreprocessError("no audio track: the video has no audio stream (give the speech as a separate file "
                                  "with --audio FILE)", self.video)
        if info.variable_rate:
            msg = (f"variable frame rate (average {info.fps:g} fps, base {info.tbr:g} fps): frames are resampled to a "
                   "constant 25 fps by their timestamps")
            self.log(msg)
        elif info.fps and abs(info.fps - V.FPS) > 0.01:
            self.log(f"{info.fps:g} fps video: resampled to 25 fps")
        crop = self.shared_crop if self.shared_crop is not None else self.choose_crop(info)
        size = int(cfg.size)
        if crop is not None:
            self.log(f"square crop x={crop.x} y={crop.y} side={crop.side} of {info.width}×{info.height}, "
                     f"resized to {size}²")
        d = self.out / "ori_imgs"
        d.mkdir(parents=True, exist_ok=True)
        bar = _Bar(cfg.progress, info.expected_frames or 0, "decode")
        n = 0
        q = int(cfg.jpeg_quality)
        try:
            with _pool(cfg.threads) as pool:
                futs = []
                for img in V.iter_frames(info, crop=crop, size=size, threads=cfg.threads):
                    futs.append(pool.submit(_write_jpeg, d / f"{n}.jpg", img.copy(), q))
                    n += 1
                    if len(futs) > 8:
                        futs.pop(0).result()
                    bar()
                for f in futs:
                    f.result()
        finally:
            bar.close()
        if n == 0:
            raise PreprocessError("no frame could be decoded (corrupt or empty video stream)", self.video)
        exp = info.expected_frames
        if exp and n < exp - max(5, int(0.05 * exp)):
            raise PreprocessError(f"truncated or corrupt video: decoded {n} frames but the header promises {exp} "
                                  f"({info.duration:.2f} s at 25 fps)", self.video)
        if n < cfg.min_frames:
            raise PreprocessError(f"video too short: {n} frames at 25 fps, at least {cfg.min_frames} are needed "
                                  "(--min-frames)", self.video)
        _stale_frames(d, ".jpg", n)
        a = V.extract_audio(audio_src, self.out / "aud.wav", n)
        if a["padded_samples"] > 0.5 * V.SAMPLE_RATE:
            pad = a["padded_samples"] / V.SAMPLE_RATE
            self.log(f"audio shorter than the video: padded with {pad:.2f} s of silence")
        self._finish("decode", n, width=size, height=size, crop=None if crop is None else crop.as_list(),
                     video=video_identity(self.video),
                     source={"width": info.width, "height": info.height, "fps": info.fps, "tbr": info.tbr,
                             "duration": info.duration, "variable_rate": info.variable_rate}, audio=a)

    def choose_crop(self, info: V.VideoInfo) -> Optional[V.Crop]:
        """The square crop for ``cfg.crop`` (None: the whole, square frame)."""
        mode = str(self.cfg.crop)
        W, H = info.width, info.height
        if mode == "auto":
            mode = "none" if W == H else "face"
        if mode == "none":
            if W != H:
                raise PreprocessError(f"--crop none needs a square video, this one is {W}×{H} (use --crop face or "
                                      "center)", self.video)
            return None
        if mode == "center":
            s = min(W, H)
            return V.Crop((W - s) // 2, (H - s) // 2, s)
        if mode == "face":
            return face_crop(info, self.cfg, log=self.log)
        try:
            x, y, s = (int(v) for v in mode.split(","))
        except ValueError:
            raise PreprocessError(f"--crop must be auto, face, center, none or X,Y,SIDE; got {mode!r}") from None
        if x < 0 or y < 0 or s <= 0 or x + s > W or y + s > H:
            raise PreprocessError(f"--crop {mode} does not fit in the {W}×{H} frame")
        return V.Crop(x, y, s)

    def step_landmarks(self) -> None:
        from . import landmarks as L

        cfg = self.cfg
        n = self.n_frames()
        bar = _Bar(cfg.progress, n, "landmarks")
        try:
            if cfg.landmarks is not None:
                raw = L.read_given(cfg.landmarks, n)
                boxes = np.stack([L.box_of(x) for x in raw])
                tr = L.LandmarkTrack(raw, np.isfinite(raw).all((1, 2)), np.ones(n, int), boxes,
                                     {"name": "given", "path": str(cfg.landmarks)})
                bar(n)
            else:
                name = L.check_backend(cfg.backend)  # fail early (missing package/weights), without loading it
                workers = cfg.threads if name == "dlib" else 1  # mediapipe/FAN track (or thread) themselves
                parts = run_chunks(_landmarks_chunk, n, workers, bar, (str(self.out), name))
                tr = L.LandmarkTrack(np.concatenate([p.lms for p in parts]), np.concatenate([p.found for p in parts]),
                                     np.concatenate([p.n_faces for p in parts]),
                                     np.concatenate([p.boxes for p in parts]), parts[0].backend)
        finally:
            bar.close()
        lms, filled = L.fill_gaps(tr.lms, tr.found, cfg.max_gap, str(self.video))
        if filled:
            self.log(f"no face in {len(filled)} frame(s) ({L.frame_ranges(filled)}): landmarks interpolated")
        multi = L.multi_face_message(tr, str(self.video))
        if multi:
            self.log(multi)
        lms = L.smooth_landmarks(lms, cfg.smooth)
        d = self.out / "ori_imgs"
        for i in range(n):
            write_bytes(d / f"{i}.lms", L.lms_text(lms[i]))
        with atomic_path(self.state / "landmarks.npz", suffix=".npz") as tmp:
            np.savez(tmp, lms=lms.astype(np.float32), raw=tr.lms.astype(np.float32), found=tr.found,
                     n_faces=tr.n_faces, boxes=tr.boxes.astype(np.float32))
        self._finish("landmarks", n, backend=tr.backend, interpolated=filled,
                     multi_face_frames=int(len(tr.multi_face_frames())), max_faces=int(max(tr.n_faces.max(), 1)))

    def step_parsing(self) -> None:
        from . import parsing as P

        cfg = self.cfg
        n = self.n_frames()
        lms = self.landmarks_array()
        first = self.frame(0)
        H, W = first.shape[:2]
        net = None
        if cfg.parsing_model:
            from .bisenet import BiSeNetParser

            net = BiSeNetParser(cfg.parsing_model)
        bgm = P.BackgroundModel(H, W)
        sample = np.unique(np.linspace(0, n - 1, min(n, 32)).round().astype(int))
        for i in sample:
            g = P.FaceGeometry.from_landmarks(lms[i])
            bgm.add(self.frame(int(i)), ~P.person_prior(g, H, W, grow=1.0))
        bgm.finish()
        d = self.out / "parsing"
        d.mkdir(parents=True, exist_ok=True)
        bar = _Bar(cfg.progress, n, "parsing")
        try:
            parts = run_chunks(_parsing_chunk, n, cfg.threads, bar, (str(self.out), lms, bgm, cfg.parsing_model))
        finally:
            bar.close()
        acc = sum(p[0] for p in parts)
        cnt = sum(p[1] for p in parts)
        _stale_frames(d, ".png", n)
        with atomic_path(self.state / "background.npz", suffix=".npz") as tmp:
            np.savez(tmp, sum=acc.astype(np.float32), count=cnt, plate=bgm.plate.astype(np.float32), known=bgm.known)
        self._finish("parsing", n, method="bisenet" if net is not None else "landmarks+background",
                     background_noise=bgm.noise, plate_known_fraction=float(bgm.known.mean()))

    def step_background(self) -> None:
        from . import parsing as P

        cfg = self.cfg
        n = self.n_frames()
        with np.load(self.state / "background.npz") as z:
            s, c = z["sum"], z["count"]
        known = c > 0
        bc = P.fill_unknown(s / np.maximum(c, 1)[..., None], known)
        bc8 = np.clip(bc + 0.5, 0, 255).astype(np.uint8)
        write_bytes(self.out / "bc.jpg", V.encode_jpeg(bc8, cfg.jpeg_quality))
        gd, td = self.out / "gt_imgs", self.out / "torso_imgs"
        gd.mkdir(parents=True, exist_ok=True)
        td.mkdir(parents=True, exist_ok=True)
        bar = _Bar(cfg.progress, n, "background")
        try:
            run_chunks(_background_chunk, n, cfg.threads, bar, (str(self.out), bc8, int(cfg.jpeg_quality)))
        finally:
            bar.close()
        _stale_frames(gd, ".jpg", n)
        _stale_frames(td, ".png", n)
        self._finish("background", n, never_uncovered_fraction=float(1 - known.mean()))

    def step_pose(self, focal: Optional[float] = None, template: Optional[np.ndarray] = None) -> None:
        from . import pose as PO

        cfg = self.cfg
        n = self.n_frames()
        rec = self.record("decode")
        W, H = int(rec["width"]), int(rec["height"])
        lms = self.landmarks_array()
        f = cfg.focal if focal is None else focal
        if template is None and cfg.template is not None:
            template = np.asarray(cfg.template, np.float64)
        X = template
        tracks = self._track_head(lms) if cfg.track_points > 0 else None
        bar = _Bar(cfg.progress, 1, "pose")
        try:
            fit = PO.fit_clip(lms, W, H, focal=f, template=X, refine_template_=cfg.refine_template,
                              smooth_sigma=cfg.pose_smooth, tracks=tracks)
        except ValueError as e:
            raise PreprocessError(f"head pose fit failed: {e}", self.out, step="pose") from None
        finally:
            bar(1)
            bar.close()
        ti = fit.info.get("tracks")
        if ti is not None and "skipped" in ti:
            self.log(f"cameras: not refined by tracked points ({ti['skipped']}); landmark cameras smoothed with "
                     f"σ {cfg.pose_smooth}")
        elif ti is not None:
            self.log(f"cameras: refined by {ti['points']} tracked head points (track residual "
                     f"{ti['residual_before_px']:.2f} → {ti['residual_after_px']:.2f} px)")
        with atomic_path(self.state / "pose.npz", suffix=".npz") as tmp:
            np.savez(tmp, R=fit.R, t=fit.t, focal=fit.focal, cx=fit.cx, cy=fit.cy, template=fit.template,
                     errors=fit.errors, rigid_errors=fit.rigid_errors)
        rows = ["frame,reprojection_error_px,rigid_reprojection_error_px"]
        rows += [f"{i},{e:.4f},{r:.4f}" for i, (e, r) in enumerate(zip(fit.errors, fit.rigid_errors))]
        atomic_write_text(self.state / "reprojection.csv", "\n".join(rows) + "\n")
        n_tr, n_va = PO.write_transforms(self.out, fit, W, H, write=lambda p, o: write_bytes(p, json.dumps(o).encode()))
        self.log(f"cameras: focal {fit.focal:.1f} px ({fit.focal / max(W, H):.2f}× the image size), reprojection error "
                 f"mean {fit.errors.mean():.2f} px (max {fit.errors.max():.2f} px at frame "
                 f"{int(fit.errors.argmax())}), "
                 f"{n_tr} train / {n_va} val frames")
        self._finish("pose", n, focal=fit.focal, mean_error_px=float(fit.errors.mean()),
                     max_error_px=float(fit.errors.max()), worst_frame=int(fit.errors.argmax()),
                     mean_rigid_error_px=float(fit.rigid_errors.mean()), **fit.info)

    def _track_head(self, lms: np.ndarray):
        """Head points tracked through the clip for the camera refinement (:mod:`ua3dtalk.preprocess.tracks`); the
        reference frame is a training frame (not among the last N // 11, the validation split)."""
        from ..data.formats import read_parsing
        from . import tracks as TR

        n = len(lms)
        n_train = n - max(1, n // 11)
        ref = TR.reference_frame(lms[:max(n_train, 1)])
        radius = 6
        labels = read_parsing(self.out / "parsing" / f"{ref}.png").numpy()
        mask = TR.head_mask(labels, lms[ref], radius)
        bar = _Bar(self.cfg.progress, n - 1, "tracks")
        try:
            return TR.track_points(self.frame, lms, mask, ref, n_points=self.cfg.track_points, radius=radius,
                                   progress=bar)
        finally:
            bar.close()

    def step_blink(self) -> None:
        from ..metrics.landmarks import ear_to_au45, eye_aspect_ratio

        n = self.n_frames()
        lms = self.landmarks_array()
        ear = np.asarray(eye_aspect_ratio(lms), np.float64)
        au = np.asarray(ear_to_au45(ear), np.float64)
        rows = ["frame, face_id, timestamp, confidence, success, AU45_r"]
        rows += [f"{i + 1}, 0, {i / V.FPS:.3f}, 0.98, 1, {a:.3f}" for i, a in enumerate(au)]
        atomic_write_text(self.out / "au.csv", "\n".join(rows) + "\n")
        self._finish("blink", n, mean_ear=float(ear.mean()))

    def step_expr(self) -> None:
        from ..metrics.landmarks import LANDMARK_EXPR_NAMES, landmark_expression

        n = self.n_frames()
        e = np.asarray(landmark_expression(self.landmarks_array()), np.float32)
        atomic_save_npy(self.out / "expr.npy", e)
        self._finish("expr", n, names=list(LANDMARK_EXPR_NAMES))

    def step_features(self) -> None:
        from ..data.audio import extract_features
        from ..data.extractors import MissingModelError as AudioMissing, make_extractor

        n = self.n_frames()
        names = []
        for kind in self.cfg.features:
            try:
                ex = make_extractor(kind, model=self.cfg.w2v_model if kind in ("wav2vec2", "w2v") else None)
            except AudioMissing as e:
                raise PreprocessError(str(e), step="features") from None
            extract_features(self.out, ex)
            names.append(ex.name)
        self._finish("features", n, files=[f"aud_{x}.npy" for x in names])


def face_crop(info: V.VideoInfo, cfg: PreprocessConfig, log=None, scan_fps: float = 2.0) -> V.Crop:
    """A square crop around the face track of a (non-square) video: faces are detected on frames
    sampled at ``scan_fps`` (downscaled to ≤ 640 px); the crop is centred horizontally on the median
    face centre, puts the eyes at ≈ 40 % of the height and is 3.2× the median face box (at most the
    short side of the frame)."""
    from . import landmarks as L

    if cfg.landmarks is not None:
        raise PreprocessError("--crop face cannot be used with given --landmarks (they must be in output-frame "
                              "pixels); give --crop X,Y,SIDE or a square video", info.path)
    scale = min(1.0, 640.0 / max(info.width, info.height))
    sw, sh = int(round(info.width * scale)) // 2 * 2, int(round(info.height * scale)) // 2 * 2
    backend = L.make_backend(cfg.backend)
    boxes, most = [], 0
    for img in _scan_frames(info, sw, sh, scan_fps):
        faces, _ = backend.find_faces(img, None)
        most = max(most, len(faces))
        if faces:
            f = max(faces, key=lambda f: f.size)
            boxes.append(f.box / scale)
    if not boxes:
        raise PreprocessError("no face found while choosing the crop (frames sampled at 2 fps); give --crop X,Y,SIDE "
                              "or --crop center", info.path, step="decode")
    if most > 1 and log is not None:
        log(f"several faces (up to {most}) in the video: the crop follows the largest face")
    b = np.median(np.stack(boxes), 0)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    side = int(min(min(info.width, info.height), round(3.2 * max(b[2] - b[0], b[3] - b[1]))))
    x = int(round(np.clip(cx - side / 2, 0, info.width - side)))
    y = int(round(np.clip(cy - 0.42 * side, 0, info.height - side)))
    return V.Crop(x, y, side)


def _scan_frames(info: V.VideoInfo, w: int, h: int, fps: float):
    import subprocess

    cmd = [V.ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(info.path), "-map", "0:v:0", "-vf",
           f"fps={fps:g},scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        while True:
            buf = p.stdout.read(w * h * 3)
            if len(buf) < w * h * 3:
                break
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        p.stdout.close()
        p.kill()
        p.wait()


def preprocess_video(video: str | Path, out: str | Path, config: Optional[PreprocessConfig] = None, *,
                     steps: Optional[Sequence[str]] = None, force: bool = False, **kw) -> dict:
    """Preprocess one talking-head video into the dataset directory ``out`` (DESIGN §5.1); see
    :class:`Preprocessor` and the module doc. Returns the report dict."""
    return Preprocessor(video, out, config, **kw).run(steps, force=force)


__all__ = ["Preprocessor", "preprocess_video", "face_crop"]
