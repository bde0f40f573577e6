"""MagNet, MagNet-Fast, patch and downsample inference, built from the plan, scheduler and refine step.

Two engines share the pieces:
- the streaming engine walks the window tree (scheduler.py) and selects points per window, so memory
  does not depend on image size (modes magnet and fast with --selection window, patch, downsample);
  MagNet-Fast there refines only the windows fast.py chooses from the coarsest level's map;
- the level engine keeps each level's whole map, like the reference implementation, for whole-level
  point selection and whole-level Fast ranking (--selection global).
Both hand finished full-resolution regions of class probabilities to a sink. With a blank mask
(`--background`), the streaming engine skips windows whose subtree is all blank and hands their regions
to the sink as None (no data); the level engine computes everything and leaves the masking to the sink.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from magnet_cli import devices
from magnet_cli.errors import UsageError
from magnet_cli.fast import FastChoice, level_windows_to_refine, ranking_depth
from magnet_cli.io.base import Box, ImageSource, PixelNormalization
from magnet_cli.io.blank_mask import BlankMask
from magnet_cli.models.bundle import ModelBundle
from magnet_cli.models.refiner import fuse_for_inference
from magnet_cli.pyramid import Level, ScalePlan, Window, default_depth, make_plan
from magnet_cli.refine import crop_resize, most_uncertain_windows, points_for_level, refine, window_points
from magnet_cli.runtime import keep_freed_memory_in_heap, one_intra_op_thread
from magnet_cli.settings import InferenceSettings, Mode, check_points, check_smooth_kernel
from magnet_cli.scheduler import BlankSubtrees, Task, TreeScheduler
from magnet_cli.units import Tree, Unit, split_units


# (y0, x0, y1, x1) full-resolution region, class probabilities (C, y1 - y0, x1 - x0); None: a blank
# region that was not segmented (--background)
Sink = Callable[[tuple[int, int, int, int], "torch.Tensor | None"], None]
# (level, windows just finished)
Progress = Callable[[int, int], None]


@dataclass
class RunStats:
    """What a run did and where its time went (seconds)."""

    windows_per_level: list[int] = field(default_factory=list)
    # Windows segmented and refined, per level: MagNet-Fast's chosen ones (the rest keep their coarse
    # map); every window walked in the other modes.
    refined_per_level: list[int] = field(default_factory=list)
    segmenter_seconds: float = 0.0
    refiner_seconds: float = 0.0
    read_wait_seconds: float = 0.0
    selection_seconds: float = 0.0  # choosing and replacing the refined points
    total_seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    peak_queued_windows: int = 0

    @property
    def windows(self) -> int:
        return sum(self.windows_per_level)


def plan_for(source_height: int, source_width: int, bundle: ModelBundle, settings: InferenceSettings) -> ScalePlan:
    """The full scale plan; modes then use all of it, its first level or its last level."""
    levels = settings.levels if settings.levels is not None else bundle.levels
    if levels is None and bundle.max_levels is not None:
        crop_height, crop_width = settings.crop_size or bundle.input_size
        levels = min(default_depth(source_height, source_width, crop_height, crop_width), bundle.max_levels)
    if isinstance(levels, int):
        # Each level halves the image: past this count the coarsest level would be under one pixel.
        most = max(source_height, source_width).bit_length()
        if levels > most:
            raise UsageError(
                f"--levels {levels}: a {source_height} x {source_width} image has at most {most} levels "
                "(each level halves the image)"
            )
    return make_plan(source_height, source_width, bundle.input_size, levels, settings.crop_size)


# The level engine holds about this many float32 copies of the finest level map at once
# (cumulative map, its upsampling, the proposal sum, the score, the result).
LEVEL_MAP_COPIES = 5


def check_level_maps_fit(plan: ScalePlan, num_classes: int, device: torch.device) -> None:
    """Refuse whole-level maps that would not fit where they live (GPU memory on CUDA), instead of
    running out of memory halfway."""
    finest = plan.levels[-1]
    needed = LEVEL_MAP_COPIES * 4 * num_classes * finest.pixel_count
    available = devices.free_memory(device)
    if needed > available // 2:
        where = devices.memory_name(device)
        raise UsageError(
            f"--selection global keeps whole level maps on {device}: about {needed / 2**30:.1f} GiB "
            f"for this image, more than half the free {where} ({available / 2**30:.1f} GiB); use --mode magnet "
            "--selection window (streaming, flat memory) or fewer/smaller --levels"
        )


class Engine:
    """Runs one model bundle over images; create once, call `run` per image."""

    def __init__(self, bundle: ModelBundle, settings: InferenceSettings) -> None:
        if settings.mode in (Mode.magnet, Mode.fast) and bundle.refiner is None:
            raise UsageError(f"--mode {settings.mode.value} needs a refiner (--refiner FILE or a bundle with one)")
        # The bundle's defaults meet the same checks as the options that override them.
        self.kernel = check_smooth_kernel(settings.smooth_kernel if settings.smooth_kernel is not None else bundle.smooth_kernel)
        self.points = check_points(settings.points if settings.points is not None else bundle.points)
        self.bundle = bundle
        self.settings = settings
        # --bands counts from 1 (GDAL's way); the readers index from 0.
        bands = tuple(b - 1 for b in settings.bands) if settings.bands else None
        # Per image, `segment` resolves --value-range auto from the file (io/value_range.py) and passes
        # it to `run`; this default serves direct callers: the option's MIN,MAX, else the bundle's, else
        # the sample type's range.
        explicit = settings.value_range if isinstance(settings.value_range, tuple) else None
        self.normalization = PixelNormalization(bands, explicit or bundle.value_range, bundle.segmenter.input_channels)
        self.device = devices.resolve_device(settings.device)
        self.dtype = devices.compute_dtype(settings.precision, self.device)
        self.batch_size = settings.batch_size or devices.auto_batch_size(self.device)
        self.read_threads = settings.read_threads or devices.auto_read_threads(self.device)
        keep_freed_memory_in_heap()
        # channels_last: oneDNN convolutions run about 3x faster in it on CPU (measured on the refiner).
        self.segmenter = bundle.segmenter.to(self.device, channels_last=True).for_inference()
        self.refiner = (
            _channels_last(fuse_for_inference(bundle.refiner).to(self.device)) if bundle.refiner is not None else None
        )
        self.input_size = bundle.input_size
        self._run_clock: devices.StageClock | None = None  # of the run in progress
        self._fast: FastChoice | None = None  # MagNet-Fast's windows for the run in progress
        self._fast_maps: dict[tuple[int, int, int], torch.Tensor] = {}  # its coarse levels, computed ahead
        self._blank: BlankSubtrees | None = None  # the run's skipped subtrees (--background)

    @property
    def precision(self) -> str:
        """The precision model calls run in (what `--precision auto` chose on this device)."""
        return devices.precision_name(self.dtype)

    # --- model calls --------------------------------------------------------------------------
    def segment_windows(self, images: torch.Tensor, stats: RunStats) -> torch.Tensor:
        """O = the segmenter's class probabilities for a host batch (N, C_in, h, w), on the device."""
        with self._stage("segmenter", stats), torch.inference_mode(), devices.autocast(self.device, self.dtype):
            images = devices.to_device(images, self.device).contiguous(memory_format=torch.channels_last)
            probabilities = self.segmenter.probabilities(images).contiguous()
        return probabilities

    def propose_refinement(self, coarse: torch.Tensor, fine: torch.Tensor, stats: RunStats) -> torch.Tensor:
        """R = softmax(refiner(Y, O)) for a batch on the device."""
        with self._stage("refiner", stats), torch.inference_mode(), devices.autocast(self.device, self.dtype):
            # On CPU one window at a time: batching gains nothing there, and the refiner's full-resolution
            # 64- and 128-channel activations of a batch of 4 at 256 px peak at ~650 MB (batch 1: ~170 MB).
            n, classes, h, w = coarse.shape
            step = n if devices.is_accelerator(self.device) else 1
            first, second = (coarse, fine) if self.refiner.input_order == "coarse_fine" else (fine, coarse)  # type: ignore[union-attr]
            proposal = torch.empty(n, classes, h, w, device=coarse.device)
            for i in range(0, n, step):
                # The refiner's input written once, joined and in channels_last, and its softmax written
                # straight into the batch: two copies fewer per window than converting, joining and stacking.
                joined = torch.empty(min(step, n - i), 2 * classes, h, w, dtype=coarse.dtype, device=coarse.device,
                                     memory_format=torch.channels_last)
                joined[:, :classes].copy_(first[i : i + step])
                joined[:, classes:].copy_(second[i : i + step])
                proposal[i : i + step] = torch.softmax(self.refiner.forward_joined(joined).float(), dim=1)  # type: ignore[union-attr]
        return proposal

    def normalization_for(self, value_range: tuple[float, float] | None) -> PixelNormalization:
        """How this engine reads an image whose values in `value_range` map to [0, 1] (None: the default)."""
        if value_range is None:
            return self.normalization
        return replace(self.normalization, value_range=tuple(value_range))

    @contextlib.contextmanager
    def timed(self, stats: RunStats) -> Iterator[None]:
        """Stage times of the model calls made inside reach `stats` at the end: on CUDA one wait for the
        queued work then, instead of one per call."""
        self._run_clock = devices.StageClock(self.device)
        try:
            yield
            _add_stage_times(stats, self._run_clock)
        finally:
            self._run_clock = None

    @contextlib.contextmanager
    def _stage(self, name: str, stats: RunStats) -> Iterator[None]:
        """Time a stage on the run's clock (read once when the run ends), or, outside a run, into `stats`
        at once."""
        clock = self._run_clock or devices.StageClock(self.device)
        with clock.stage(name):
            yield
        if clock is not self._run_clock:
            _add_stage_times(stats, clock)

    # --- entry point --------------------------------------------------------------------------
    @property
    def whole_levels(self) -> bool:
        """Whether this mode needs whole-level maps (the level engine), which cannot be split in units."""
        return self.settings.mode in (Mode.fast, Mode.magnet) and self.settings.selection == "global"

    def plan(self, height: int, width: int) -> ScalePlan:
        """The plan this mode walks: all levels, or only the finest (patch) or the coarsest (downsample)."""
        plan = plan_for(height, width, self.bundle, self.settings)
        if self.settings.mode == Mode.patch:
            return _single_level(plan, plan.levels[-1])
        if self.settings.mode == Mode.downsample:
            return _single_level(plan, plan.levels[0])
        return plan

    def units(self, plan: ScalePlan) -> list[Unit]:
        """The units of work of an image (see units.py); the same list in every process."""
        return split_units(plan, whole=self.whole_levels)

    def windows_to_do(self, plan: ScalePlan, units: Sequence[Unit]) -> list[int]:
        """Windows per level that running `units` computes (progress bars and reports)."""
        if not self.whole_levels:
            return Tree(plan).windows_per_level(units)
        if not units:
            return [0] * plan.depth
        counts = [level.window_count for level in plan.levels]
        if self.settings.mode == Mode.fast:  # on the levels it chooses on, only the most uncertain windows
            return [self._fast_count(plan, index, count) for index, count in enumerate(counts)]
        return counts

    def _fast_count(self, plan: ScalePlan, level: int, count: int) -> int:
        """How many of `level`'s `count` windows MagNet-Fast refines."""
        return level_windows_to_refine(level, plan.depth, count, self.settings.fast_patches, self.settings.fast_levels)

    def run(
        self,
        source: ImageSource,
        sink: Sink,
        progress: Progress | None = None,
        units: Sequence[Unit] | None = None,
        unit_done: Callable[[Unit], None] | None = None,
        value_range: tuple[float, float] | None = None,
        blank: BlankMask | None = None,
    ) -> RunStats:
        """Segment `units` of one image (all of them by default); every full-resolution pixel they own
        reaches `sink` exactly once, and `unit_done(unit)` follows the last pixel of each unit.
        `value_range`: the input values that map to [0, 1] for this image (default: see __init__);
        `blank`: the image's blank cells, whose all-blank subtrees are neither read nor segmented."""
        plan = self.plan(source.height, source.width)
        units = list(units) if units is not None else self.units(plan)
        stats = RunStats(device=str(self.device), precision=self.precision)
        stats.windows_per_level = [0] * plan.depth
        stats.refined_per_level = [0] * plan.depth
        start = time.perf_counter()
        h, w = self.input_size

        normalization = self.normalization_for(value_range)
        self._fast, self._fast_maps = None, {}
        self._blank = BlankSubtrees(plan, blank) if blank is not None and not self.whole_levels else None

        def read(window: Window) -> torch.Tensor | None:
            if self._fast is not None and (not self._fast.refines(window) or window.key in self._fast_maps):
                return None  # Fast leaves this window to its coarse map, or computed it ahead: no pixels needed
            return source.read(Box(window.y0, window.x0, window.y1, window.x1), h, w, normalization)

        with self.timed(stats), devices.device_errors(self.device, self.batch_size), ThreadPoolExecutor(
            max_workers=self.read_threads, thread_name_prefix="read", initializer=one_intra_op_thread
        ) as pool:
            if self.whole_levels:
                if units:
                    check_level_maps_fit(plan, self.bundle.num_classes, self.device)
                    self._run_levels(plan, read, pool, sink, progress or _ignore, stats)
            else:
                tree = Tree(plan)
                chain: dict[tuple[int, int, int], torch.Tensor] = {}  # refined maps of the current ancestors
                if self.settings.mode == Mode.fast and units:
                    self._fast = self._choose_fast_windows(plan, read, pool, stats)
                for unit in units:
                    self._run_unit(plan, tree, unit, chain, read, pool, sink, progress or _ignore, stats)
                    if unit_done is not None:
                        unit_done(unit)
        self._fast_maps, self._blank = {}, None  # the maps computed ahead belong to this run only
        if self.whole_levels and units and unit_done is not None:
            unit_done(units[0])
        stats.total_seconds = time.perf_counter() - start
        return stats

    # --- streaming engine ---------------------------------------------------------------------
    def _run_unit(self, plan: ScalePlan, tree: Tree, unit: Unit, chain: dict, read, pool, sink: Sink,
                  progress: Progress, stats: RunStats) -> None:
        """One unit: its roots take their coarse maps from their ancestors, then its subtree streams."""
        roots = []
        for root in unit.roots(plan):
            if self._pruned(plan, root, sink, progress):
                continue
            parent = plan.parent(root)
            if parent is None:
                roots.append(Task(root))
            else:
                parent_map = self._ancestor_map(plan, tree, parent, chain, read, pool, progress, stats)
                self._expanding(parent, parent_map)
                roots.append(Task(root, parent, parent_map))
        prune = None if self._blank is None else lambda window: self._pruned(plan, window, sink, progress)
        scheduler = TreeScheduler(plan, self.batch_size, read, pool, roots=roots, tree=tree, prune=prune)
        last = plan.depth - 1
        for level, tasks in scheduler:
            maps = self._process(plan, level, tasks, stats)
            for task, window_map in zip(tasks, maps):
                if level == last:
                    _emit(plan, task.window, window_map, sink)
                else:
                    self._expanding(task.window, window_map)
                    scheduler.expand(task.window, window_map)
            self._count(stats, level, [task.window for task in tasks])
            progress(level, len(tasks))
        stats.peak_queued_windows = max(stats.peak_queued_windows, scheduler.peak_queued)

    def _pruned(self, plan: ScalePlan, window: Window, sink: Sink, progress: Progress) -> bool:
        """Whether `window`'s subtree is blank and skipped; if so its output regions go to the sink as no
        data and its windows count as done on the progress bars."""
        if self._blank is None or not self._blank.skips(window):
            return False
        subtree = self._blank.subtree(window)
        for offset, (rows, cols) in enumerate(subtree):
            progress(window.level + offset, len(rows) * len(cols))
        last = plan.depth - 1
        rows, cols = subtree[-1]
        for row in rows:
            for col in cols:
                _emit_blank(plan.owned_region(plan.window(last, row, col)), sink)
        return True

    def _ancestor_map(self, plan: ScalePlan, tree: Tree, window: Window, chain: dict, read, pool,
                      progress: Progress, stats: RunStats) -> torch.Tensor:
        """The refined map of a unit's ancestor, computed alone (a batch of 1) so that it is the same in
        every process; kept while later units share it (units come in tree order)."""
        if window.key in chain:
            return chain[window.key]
        path = {w.key for w in [*tree.ancestors(window), window]}
        for key in [k for k in chain if k not in path]:  # a new branch: drop the old one's maps
            del chain[key]
        parent = plan.parent(window)
        parent_map = None if parent is None else self._ancestor_map(plan, tree, parent, chain, read, pool, progress, stats)
        if parent is not None:
            self._expanding(parent, parent_map)  # type: ignore[arg-type]
        task = Task(window, parent, parent_map, image=pool.submit(read, window))
        chain[window.key] = self._process(plan, window.level, [task], stats)[0]
        self._count(stats, window.level, [window])
        progress(window.level, 1)
        return chain[window.key]

    def _count(self, stats: RunStats, level: int, windows: list[Window]) -> None:
        """Count `level`'s `windows` as walked, and those the run segmented and refined."""
        stats.windows_per_level[level] += len(windows)
        stats.refined_per_level[level] += sum(1 for w in windows if self._fast is None or self._fast.refines(w))

    def _process(self, plan: ScalePlan, level: int, tasks: list[Task], stats: RunStats) -> torch.Tensor:
        """Segment a batch of one level's windows and refine each with its parent's map: (N, C, h, w)."""
        h, w = self.input_size
        if self._fast_maps:  # MagNet-Fast computed some windows ahead (ranked or probed): take those
            ahead = [t.window.key in self._fast_maps for t in tasks]
            if all(ahead):
                return torch.stack([self._fast_maps[t.window.key] for t in tasks])
            if any(ahead):
                rest = self._process(plan, level, [t for t, done in zip(tasks, ahead) if not done], stats)
                maps = torch.empty(len(tasks), *rest.shape[1:], dtype=rest.dtype, device=rest.device)
                computed = iter(rest)
                for slot, task, done in zip(maps, tasks, ahead):
                    slot.copy_(self._fast_maps[task.window.key] if done else next(computed))
                return maps
        if level == 0 or self.refiner is None:
            return self.segment_windows(self._gather(tasks, stats), stats)
        boxes = torch.tensor(
            [_box_in_parent(t.window, t.parent, h, w) for t in tasks], dtype=torch.float64  # type: ignore[arg-type]
        )
        parents = _parent_maps(tasks)
        coarse = crop_resize(parents, boxes, (h, w))
        chosen = [i for i, t in enumerate(tasks) if self._fast is None or self._fast.refines(t.window)]
        if not chosen:  # MagNet-Fast: none of these windows is refined; they keep Y
            return coarse
        fine = self.segment_windows(self._gather([tasks[i] for i in chosen], stats), stats)
        mine = coarse if len(chosen) == len(tasks) else coarse[chosen]
        proposal = self.propose_refinement(mine, fine, stats)
        k = window_points(self.points, plan.levels[level].pixel_count, h * w)
        with self._stage("selection", stats):
            refined = refine(mine, proposal, k, self.kernel)
        if len(chosen) == len(tasks):
            return refined
        coarse[chosen] = refined
        return coarse

    def _choose_fast_windows(self, plan: ScalePlan, read, pool, stats: RunStats) -> FastChoice:
        """MagNet-Fast's windows for the whole run (fast.py). The coarse levels are computed here, each
        window alone (a batch of 1) so that every process of the run chooses the same windows; their maps
        are kept for the run (`_fast_maps`) and the streaming pass takes them instead of recomputing."""
        blank = self._blank
        choice = FastChoice(plan, self.settings.fast_patches, self.settings.fast_levels,
                            skips=blank.skips if blank is not None else None)
        self._fast, self._fast_maps = choice, {}
        ranked_ahead = ranking_depth(plan)
        for level in range(ranked_ahead):
            if level > 0:
                choice.rank(level, {w.key: self._fast_maps[w.key] for w in plan.windows(level - 1) if w.key in self._fast_maps})
            for window in plan.windows(level):
                if blank is not None and blank.skips(window):
                    continue  # pruned in the streaming pass; not ranked
                parent = plan.parent(window)
                parent_map = None if parent is None else self._fast_maps[parent.key]
                task = Task(window, parent, parent_map, image=pool.submit(read, window))
                self._fast_maps[window.key] = self._process(plan, level, [task], stats)[0]
        finest = {w.key: self._fast_maps[w.key] for w in plan.windows(ranked_ahead - 1) if w.key in self._fast_maps}
        for level in range(ranked_ahead, plan.depth):
            choice.calibrate(level, finest)
        if ranked_ahead < plan.depth:
            probes = choice.probe_windows(ranked_ahead, finest)
            for window in probes:  # computed as the streaming pass would, which then takes them
                parent = plan.parent(window)
                assert parent is not None
                choice.choose_children(parent, self._fast_maps[parent.key])
                task = Task(window, parent, self._fast_maps[parent.key], image=pool.submit(read, window))
                self._fast_maps[window.key] = self._process(plan, ranked_ahead, [task], stats)[0]
            if probes:
                choice.correct(ranked_ahead, {w.key: self._fast_maps[w.key] for w in probes}, finest)
        return choice

    def _expanding(self, window: Window, window_map: torch.Tensor) -> None:
        """`window`'s refined map is done and its children are about to be queued (and read): MagNet-Fast
        chooses which of them to refine from it."""
        if self._fast is not None:
            self._fast.choose_children(window, window_map)

    def _gather(self, tasks: list, stats: RunStats) -> torch.Tensor:
        start = time.perf_counter()
        windows = [t.image.result() for t in tasks]
        stats.read_wait_seconds += time.perf_counter() - start
        # Straight into the channels_last batch the segmenter takes (one copy, not a stack and a conversion).
        images = torch.empty(len(windows), *windows[0].shape, dtype=windows[0].dtype, memory_format=torch.channels_last)
        for slot, window in zip(images, windows):
            slot.copy_(window)
        return images

    # --- level engine (whole-level maps, as the reference) -------------------------------------
    def _run_levels(self, plan: ScalePlan, read, pool, sink: Sink, progress: Progress, stats: RunStats) -> None:
        h, w = self.input_size
        stats.windows_per_level = [0] * plan.depth
        stats.refined_per_level = [0] * plan.depth
        level_map: torch.Tensor | None = None
        for index, spec in enumerate(plan.levels):
            windows = plan.windows(index)
            if index == 0:
                level_map, _ = self._assemble(plan, spec, windows, read, pool, stats, coarse=None)
            else:
                coarse = F.interpolate(level_map, size=(spec.height, spec.width), mode="bilinear", align_corners=False)
                if self.settings.mode == "fast":
                    windows = self._most_uncertain(spec, windows, coarse, self._fast_count(plan, index, len(windows)))
                proposal, covered = self._assemble(plan, spec, windows, read, pool, stats, coarse=coarse)
                k = points_for_level(self.points, spec.pixel_count, len(windows), spec.window_count)
                with self._stage("selection", stats):
                    level_map = refine(coarse, proposal, k, self.kernel, blur_size=(h, w), allowed=covered)
            stats.windows_per_level[index] = stats.refined_per_level[index] = len(windows)
            progress(index, len(windows))
        assert level_map is not None
        last = plan.depth - 1
        scale_y = plan.levels[last].height / plan.image_height
        scale_x = plan.levels[last].width / plan.image_width
        for window in plan.windows(last):
            y0, x0, y1, x1 = plan.owned_region(window)
            box = torch.tensor([[y0 * scale_y, x0 * scale_x, y1 * scale_y, x1 * scale_x]], dtype=torch.float64)
            sink((y0, x0, y1, x1), _resample(level_map, box, (y1 - y0, x1 - x0))[0])

    def _assemble(self, plan, spec: Level, windows: list[Window], read, pool, stats, coarse):
        """Segment (and refine, given the coarse level map) windows; average them into a level map."""
        h, w = self.input_size
        c = self.bundle.num_classes
        total = torch.zeros(1, c, spec.height, spec.width, device=self.device)
        count = torch.zeros(1, 1, spec.height, spec.width, device=self.device)
        batch = self.batch_size
        futures = [pool.submit(read, window) for window in windows[:batch]]
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            images = torch.stack([f.result() for f in futures])
            futures = [pool.submit(read, window) for window in windows[start + batch : start + 2 * batch]]
            maps = self.segment_windows(images, stats)
            regions = [_level_region(spec, window) for window in chunk]
            if coarse is not None:
                boxes = torch.tensor([[r[0], r[1], r[2], r[3]] for r in regions], dtype=torch.float64)
                crops = crop_resize(coarse.expand(len(chunk), -1, -1, -1), boxes, (h, w))
                maps = self.propose_refinement(crops, maps, stats)
            for window_map, (y0, x0, y1, x1) in zip(maps, regions):
                resized = F.interpolate(window_map[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
                total[:, :, y0:y1, x0:x1] += resized
                count[:, :, y0:y1, x0:x1] += 1
        return total / count.clamp(min=1), count > 0

    @staticmethod
    def _most_uncertain(spec: Level, windows: list[Window], coarse: torch.Tensor, n: int) -> list[Window]:
        """MagNet-Fast: the n windows with the HIGHEST mean uncertainty of Y (the paper, not the code)."""
        return [windows[i] for i in most_uncertain_windows(coarse, [_level_region(spec, w) for w in windows], n)]


def _add_stage_times(stats: RunStats, clock: devices.StageClock) -> None:
    totals = clock.totals()
    stats.segmenter_seconds += totals.get("segmenter", 0.0)
    stats.refiner_seconds += totals.get("refiner", 0.0)
    stats.selection_seconds += totals.get("selection", 0.0)


def _channels_last(module: torch.nn.Module) -> torch.nn.Module:
    try:
        return module.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    except (RuntimeError, TypeError):  # some TorchScript modules refuse; they still run
        return module


def _ignore(level: int, count: int) -> None:
    return None


def _single_level(plan: ScalePlan, level: Level) -> ScalePlan:
    return ScalePlan(plan.image_height, plan.image_width, plan.input_height, plan.input_width, (level,))


def _level_region(spec: Level, window: Window) -> tuple[int, int, int, int]:
    y0, y1 = spec.rows.interval(window.row)
    x0, x1 = spec.cols.interval(window.col)
    return y0, x0, y1, x1


def _parent_maps(tasks: list[Task]) -> torch.Tensor | list[torch.Tensor]:
    """The tasks' parent maps for crop_resize, never copied: siblings (the usual batch) share their
    parent's map, expanded to (N, C, h, w); a batch of several parents' children (blank siblings pruned,
    a unit's roots) gets the list of maps."""
    first = tasks[0].parent_map
    if all(t.parent_map is first for t in tasks):
        return first.expand(len(tasks), *first.shape)  # type: ignore[union-attr]
    return [t.parent_map for t in tasks]  # type: ignore[misc]


def _box_in_parent(window: Window, parent: Window, height: int, width: int) -> list[float]:
    """The child's box in the parent's map pixels (the parent's map spans its box at height x width)."""
    sy, sx = height / (parent.y1 - parent.y0), width / (parent.x1 - parent.x0)
    return [
        (window.y0 - parent.y0) * sy,
        (window.x0 - parent.x0) * sx,
        (window.y1 - parent.y0) * sy,
        (window.x1 - parent.x0) * sx,
    ]


EMIT_TILE = 1024  # full-resolution pixels per side of each piece a window hands to the sink


def _emit(plan: ScalePlan, window: Window, window_map: torch.Tensor, sink: Sink) -> None:
    """Hand the part of a finest-level window's map that it owns to the sink, at full resolution.

    In pieces of at most EMIT_TILE x EMIT_TILE: a window of a coarse plan (`downsample` mode, or custom
    `--levels`) can own a region far larger than its map, and resampling it whole would hold C x H x W
    floats of the full image.
    """
    y0, x0, y1, x1 = plan.owned_region(window)
    h, w = window_map.shape[-2:]
    sy, sx = h / (window.y1 - window.y0), w / (window.x1 - window.x0)
    for ty in range(y0, y1, EMIT_TILE):
        for tx in range(x0, x1, EMIT_TILE):
            ty1, tx1 = min(ty + EMIT_TILE, y1), min(tx + EMIT_TILE, x1)
            box = torch.tensor(
                [[(ty - window.y0) * sy, (tx - window.x0) * sx, (ty1 - window.y0) * sy, (tx1 - window.x0) * sx]],
                dtype=torch.float64,
            )
            sink((ty, tx, ty1, tx1), _resample(window_map[None], box, (ty1 - ty, tx1 - tx))[0])


def _emit_blank(region: tuple[int, int, int, int], sink: Sink) -> None:
    """A blank region to the sink as None, in pieces of at most EMIT_TILE x EMIT_TILE (as _emit)."""
    y0, x0, y1, x1 = region
    for ty in range(y0, y1, EMIT_TILE):
        for tx in range(x0, x1, EMIT_TILE):
            sink((ty, tx, min(ty + EMIT_TILE, y1), min(tx + EMIT_TILE, x1)), None)


def _resample(maps: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """crop_resize, with a plain slice when the box is whole pixels at scale 1 (the common case)."""
    y0, x0, y1, x1 = (float(v) for v in box[0])
    if all(abs(v - round(v)) < 1e-6 for v in (y0, x0, y1, x1)) and (round(y1 - y0), round(x1 - x0)) == tuple(size):
        return maps[:, :, round(y0) : round(y1), round(x0) : round(x1)]
    return crop_resize(maps, box, size)
