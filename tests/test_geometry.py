"""Photometric losses and view-synthesis geometry, checked by hand and against the generated world.

Conventions of the generated world (bench/core/synth/scene.py, render.py, writer.py), which the
geometry module shares:
- camera axes are OpenCV's: x right, y down, z forward; depth maps hold the z coordinate;
- the world frame is the first camera's unrotated frame (y down, the road at y = +1.5);
- `meta.json` "sequences"[i]["poses"][k] is the 4x4 camera-to-world transform of frame k:
  X_world = R X_cam + c (render.rays turns camera rays into world rays with R);
- pixel (row i, column j) has image coordinates (u, v) = (j, i), integer pixel centres;
- the right camera has the left one's orientation and sits at +baseline along its x axis;
- `flow/k.npy` (H×W×2, (du, dv)) is where each pixel's surface point of frame k lands in frame
  k+1, moving objects moved with their velocity, occlusion ignored.
So points of camera k are in camera k+1's coordinates after T = inv(pose[k+1]) @ pose[k], and
left-camera points are right-camera points after T = translation(-baseline, 0, 0).
"""

import math

import numpy as np
import pytest
import torch

from bench.core.synth import load_meta, read_frame
from pretrain.geometry import backproject, flow_warp, inverse_warp, pose_from_axisangle, project
from pretrain.photometric import C1, C2, edge_aware_smoothness, photometric_error, ssim
from tests.margins import assert_above, assert_below


# --- photometric -----------------------------------------------------------------------------

X = [[0.1, 0.5, 0.9], [0.3, 0.7, 0.2], [0.8, 0.4, 0.6]]
Y = [[0.2, 0.5, 0.7], [0.1, 0.9, 0.3], [0.6, 0.6, 0.4]]


def _ssim_by_hand(xs: list[float], ys: list[float]) -> float:
    """SSIM of two windows from the formula, with population statistics."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    vx = sum((a - mx) ** 2 for a in xs) / n
    vy = sum((b - my) ** 2 for b in ys) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / n
    return ((2 * mx * my + C1) * (2 * cov + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))


def _window(img, rows, cols):
    return [img[r][c] for r in rows for c in cols]


def test_ssim_matches_the_formula_by_hand():
    got = ssim(torch.tensor(X)[None, None], torch.tensor(Y)[None, None])[0, 0]
    # The centre pixel's 3x3 window is the whole image.
    centre = _ssim_by_hand(_window(X, (0, 1, 2), (0, 1, 2)), _window(Y, (0, 1, 2), (0, 1, 2)))
    assert float(got[1, 1]) == pytest.approx(centre, rel=1e-5)
    # A corner's window is reflection-padded: row/column -1 mirrors to 1.
    corner = _ssim_by_hand(_window(X, (1, 0, 1), (1, 0, 1)), _window(Y, (1, 0, 1), (1, 0, 1)))
    assert float(got[0, 0]) == pytest.approx(corner, rel=1e-5)
    assert 0.0 < centre < 1.0 and abs(centre - corner) > 1e-3  # the two cases really differ


def test_photometric_error_of_identical_images_is_zero():
    x = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    assert photometric_error(x, x).shape == (2, 1, 8, 10)
    torch.testing.assert_close(photometric_error(x, x), torch.zeros(2, 1, 8, 10), atol=1e-6, rtol=0)
    y = x.flip(-1)
    assert float(photometric_error(y, x).mean()) > 0.05
    # alpha = 0 is the plain L1 over channels.
    torch.testing.assert_close(photometric_error(y, x, alpha=0.0), (y - x).abs().mean(1, keepdim=True))


def test_smoothness_is_cheaper_across_image_edges():
    image = torch.zeros(1, 3, 6, 6)
    image[..., 3:] = 1.0                 # a vertical edge between columns 2 and 3
    flat = torch.ones(1, 1, 6, 6)
    step_at_edge, step_elsewhere = flat.clone(), flat.clone()
    step_at_edge[..., 3:] = 2.0
    step_elsewhere[..., 1:] = 2.0
    assert float(edge_aware_smoothness(flat, image)) == 0.0
    assert float(edge_aware_smoothness(step_at_edge, image)) < float(edge_aware_smoothness(step_elsewhere, image))
    # Several channels (flow) are smoothed alike.
    assert edge_aware_smoothness(torch.cat([step_at_edge, step_elsewhere], 1), image).shape == ()


# --- poses and projection --------------------------------------------------------------------

def test_pose_from_axisangle_rotates_and_inverts():
    theta = 0.3
    T = pose_from_axisangle(torch.tensor([[0.0, theta, 0.0]], dtype=torch.float64),
                            torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64))[0]
    c, s = math.cos(theta), math.sin(theta)
    # A rotation about +y (the world's yaw, scene.trajectory) written out.
    expected = torch.tensor([[c, 0, s, 1.0], [0, 1, 0, -2.0], [-s, 0, c, 3.0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(T, expected)
    inv = pose_from_axisangle(torch.tensor([[0.0, theta, 0.0]], dtype=torch.float64),
                              torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64), invert=True)[0]
    torch.testing.assert_close(inv @ T, torch.eye(4, dtype=torch.float64))


def test_axisangle_round_trips_through_the_matrix():
    vec = torch.tensor([[0.2, -0.5, 0.4], [1e-9, 0.0, 0.0]], dtype=torch.float64)
    R = pose_from_axisangle(vec, torch.zeros(2, 3, dtype=torch.float64))[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    r = R[0]
    angle = math.acos((float(torch.trace(r)) - 1) / 2)
    axis = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * math.sin(angle))
    torch.testing.assert_close(axis * angle, vec[0])
    torch.testing.assert_close(R[1], torch.eye(3, dtype=torch.float64))  # no rotation stays finite


def _pixel_grid_normalised(h, w):
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([2 * u / (w - 1) - 1, 2 * v / (h - 1) - 1], -1)


def test_backproject_then_project_is_the_identity():
    h, w = 5, 7
    K = torch.tensor([[[6.0, 0, 3.2], [0, 5.0, 2.1], [0, 0, 1]]], dtype=torch.float64).repeat(2, 1, 1)
    depth = 1 + 9 * torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    points = backproject(depth, torch.linalg.inv(K))
    torch.testing.assert_close(points[:, 2:], depth)  # depth is the z coordinate
    eye = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    torch.testing.assert_close(project(points, K, eye), _pixel_grid_normalised(h, w).expand(2, h, w, 2))
    # Moving the points by T and projecting with T^-1 lands on the same pixels.
    T = pose_from_axisangle(torch.tensor([[0.05, -0.1, 0.02]] * 2, dtype=torch.float64),
                            torch.tensor([[0.3, 0.1, -0.5]] * 2, dtype=torch.float64))
    moved = (T[:, :3, :3] @ points.flatten(2) + T[:, :3, 3:]).view_as(points)
    torch.testing.assert_close(project(moved, K, torch.linalg.inv(T)), _pixel_grid_normalised(h, w).expand(2, h, w, 2))


# --- warping the generated world -------------------------------------------------------------

def _image(arr):
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255.0


def _static_mask(meta, frame):
    """Pixels of fixed scenery with a real depth: no cars (they move), no sky (infinitely far)."""
    names = meta["classes"]
    moving_or_far = np.isin(frame["label"], [names.index("car"), names.index("sky")])
    return ~moving_or_far & (frame["depth"] < float(meta["max_depth"]))


def _lands_inside(u_offset, v_offset):
    """Pixels whose displaced position (pixel + offset) is inside the image."""
    h, w = u_offset.shape
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    u, v = jj + u_offset, ii + v_offset
    return (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)


def _mean_error(a, b, mask):
    return float((a - b).abs().mean(1)[0][torch.from_numpy(mask)].mean())


@pytest.fixture(scope="module")
def world(tiny_world):
    meta = load_meta(tiny_world)
    seq = meta["sequences"][0]
    frames = [read_frame(tiny_world, seq["name"], k) for k in (1, 2)]
    return meta, np.asarray(seq["poses"])[[1, 2]], frames


def test_projection_with_true_depth_and_pose_matches_the_true_flow(world):
    meta, poses, (cur, _) = world
    K = torch.tensor(meta["intrinsics"], dtype=torch.float32)[None]
    T = torch.from_numpy(np.linalg.inv(poses[1]) @ poses[0]).float()[None]
    grid = project(backproject(torch.from_numpy(cur["depth"])[None, None], torch.linalg.inv(K)), K, T)[0]
    h, w = cur["depth"].shape
    uv = (grid.double() + 1) / 2 * torch.tensor([w - 1, h - 1], dtype=torch.float64)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    flow = uv.numpy() - np.stack([jj, ii], -1)
    static = _static_mask(meta, cur)
    assert_above(static.mean(), 0.5, "share of static pixels")
    assert_below(np.abs(flow - cur["flow"])[static].max(), 0.01, "projected vs true flow, largest error (px)")


def test_inverse_warp_with_true_depth_and_pose_reproduces_the_frame(world):
    meta, poses, (cur, nxt) = world
    K = torch.tensor(meta["intrinsics"], dtype=torch.float32)[None]
    depth = torch.from_numpy(cur["depth"])[None, None]
    mask = _static_mask(meta, cur) & _lands_inside(cur["flow"][..., 0], cur["flow"][..., 1])
    target, source = _image(cur["rgb"]), _image(nxt["rgb"])
    true = torch.from_numpy(np.linalg.inv(poses[1]) @ poses[0]).float()[None]
    err = _mean_error(inverse_warp(source, depth, true, K), target, mask)
    # Residual: bilinear resampling of texture (a few grey levels), not geometry.
    assert_below(err, 0.035, "video warp with the true pose: mean error")
    wrong = true.clone()
    wrong[:, 2, 3] += 0.5  # half a metre too far along the road
    assert_above(_mean_error(inverse_warp(source, depth, wrong, K), target, mask), 1.8 * err,
                 "video warp 0.5 m off vs 1.8 x the true pose's")
    still = torch.eye(4)[None]  # no motion at all
    assert_above(_mean_error(inverse_warp(source, depth, still, K), target, mask), 2.5 * err,
                 "video warp without motion vs 2.5 x the true pose's")


def test_inverse_warp_with_the_stereo_baseline_reproduces_the_left_image(world):
    meta, _, (cur, _) = world
    K = torch.tensor(meta["intrinsics"], dtype=torch.float32)[None]
    baseline = float(meta["baseline"])
    depth = torch.from_numpy(cur["depth"])[None, None]
    disparity = K[0, 0, 0].item() * baseline / cur["depth"]  # the left pixel u is at u - d in the right image
    mask = _static_mask(meta, cur) & _lands_inside(-disparity, np.zeros_like(disparity))
    left, right = _image(cur["rgb"]), _image(cur["rgb_right"])
    left_to_right = torch.eye(4)[None]
    left_to_right[0, 0, 3] = -baseline
    err = _mean_error(inverse_warp(right, depth, left_to_right, K), left, mask)
    assert_below(err, 0.03, "stereo warp with the true baseline: mean error")
    wrong = torch.eye(4)[None]
    wrong[0, 0, 3] = baseline  # the right camera mistaken for a left one
    assert_above(_mean_error(inverse_warp(right, depth, wrong, K), left, mask), 3 * err,
                 "stereo warp with the baseline reversed vs 3 x the true one's")


def test_flow_warp_with_the_true_flow_reproduces_the_frame(world):
    meta, _, (cur, nxt) = world
    flow = torch.from_numpy(cur["flow"]).permute(2, 0, 1)[None]
    mask = _static_mask(meta, cur) & _lands_inside(cur["flow"][..., 0], cur["flow"][..., 1])
    target, source = _image(cur["rgb"]), _image(nxt["rgb"])
    err = _mean_error(flow_warp(source, flow), target, mask)
    assert_below(err, 0.035, "flow warp with the true flow: mean error")
    assert_above(_mean_error(flow_warp(source, torch.zeros_like(flow)), target, mask), 2.5 * err,
                 "flow warp with zero flow vs 2.5 x the true flow's")
    assert_above(_mean_error(flow_warp(source, -flow), target, mask), 2.5 * err,
                 "flow warp with the flow reversed vs 2.5 x the true flow's")
