# DeepLabV3 (ASPP head) as an MMSegmentation config for the harness encoder.
#
#   bench transfer ... --decoder mmseg:configs/mmseg/deeplabv3_aspp.py      (needs: pip install -e ".[mmseg]")
#
# Self-contained (no _base_): MMSeg's deeplabv3_r50-d8 recipe, slimmed for small runs -- ASPP at
# output stride 16 (rates 6/12/18, Chen et al. 2017) with 256 channels, and the FCN auxiliary head
# on the stride-16 level with loss weight 0.4. Level numbers are MMSeg's: 0..3 = strides 4..32
# (the bridge maps them to the harness levels and rewrites in_channels and num_classes; the values
# below are resnet18's). SyncBN as in MMSeg; the bridge runs it as BN in one process.
default_scope = 'mmseg'  # for MMSeg's own tools (Runner); the bridge builds from MMSeg's registry directly
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(  # used only by a full MMSeg EncoderDecoder; the harness normalises itself
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    # The harness encoder; the bridge takes output_stride from here (arch comes from --arch).
    backbone=dict(type='HarnessEncoder', arch='resnet18', output_stride=16),
    decode_head=dict(
        type='ASPPHead',
        in_channels=512,
        in_index=3,
        channels=256,
        dilations=(1, 6, 12, 18),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=256,
        in_index=2,
        channels=64,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
