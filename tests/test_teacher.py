"""The EMA teacher's view selection: which views it embeds, which the online network
skips, and the configurations that cannot work with that."""

from __future__ import annotations

import pytest
import torch

from metacontrast.builtin.encoders import Conv4, Conv4Config
from metacontrast.builtin.heads import IdentityHead
from metacontrast.config import ConfigError, compose_config
from metacontrast.interfaces import BuildContext, NoConfig
from metacontrast.model import Model
from metacontrast.records import Episode, ShapeError, Views
from metacontrast.teacher import EMATeacher
from metacontrast.trainer import setup

from .conftest import TINY


def _model(views, exclusive):
    torch.manual_seed(0)
    ctx = BuildContext(in_channels=1, image_size=16, mean=(0.5,), std=(0.25,))
    encoder = Conv4(Conv4Config(hidden=4, pool="avg"), ctx)
    head = IdentityHead(NoConfig(), ctx.evolve(encoder_dim=encoder.out_dim))
    teacher = EMATeacher(encoder, head, 0.99, views=views, exclusive=exclusive)
    return Model(encoder, head, {}, {}, teacher=teacher)


def _views(n_views=3, b=4):
    g = torch.Generator().manual_seed(1)
    return Views(images=tuple(torch.randn(b, 1, 16, 16, generator=g) for _ in range(n_views)),
                 index=torch.arange(b))


def test_teacher_embeds_only_its_views_and_the_online_network_skips_them_when_exclusive():
    views = _views()
    model = _model(views=(1,), exclusive=True).eval()  # running statistics: rows compare one by one
    emb = model.embed(views)
    assert emb.z.shape[0] == 2 * 4 and emb.online_views == (0, 2)
    assert emb.teacher_z.shape[0] == 4 and emb.teacher_views == (1,)
    with torch.no_grad():
        for v in (0, 2):  # the rows are the online network's outputs for those views
            assert torch.allclose(emb.view(v, 3), model.head(model.encoder(views.images[v])), atol=1e-6)
        # the teacher starts as a copy: its key-view rows equal the online network's
        assert torch.allclose(emb.teacher_view(1, 3), model.encoder(views.images[1]), atol=1e-6)
    with pytest.raises(ShapeError, match=r"view 1 asked for, but the online network embeds views \[0, 2\]"):
        emb.view(1, 3)
    shared = _model(views=(1,), exclusive=False).embed(views)
    assert shared.z.shape[0] == 3 * 4 and shared.online_views == ()


def test_teacher_view_names_the_setting_to_change():
    emb = _model(views=(2,), exclusive=False).embed(_views())
    with pytest.raises(ShapeError, match="set teacher.views to include 0"):
        emb.teacher_view(0, 3)
    model = _model(views=(5,), exclusive=False)
    with pytest.raises(ShapeError, match=r"teacher.views: \[5\] names a view"):
        model(_views(), Episode.from_views(_views()))


def test_exclusive_teacher_refuses_losses_that_read_every_view(tmp_path):
    cfg = compose_config([*TINY, "method=byol", "+teacher.views=[1]", "teacher.exclusive=true",
                          f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"teacher.exclusive: loss 'byol' reads every view"):
        setup(cfg)
    cfg = compose_config([*TINY, "method=moco_v2", "teacher.views=null", f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="teacher.exclusive needs teacher.views"):
        setup(cfg)
