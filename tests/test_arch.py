"""arch.py is the one spec of VGG: the net, the converters and the memory estimate read it."""

import pytest

from minivgg import MiniVGGError, arch, vgg


def test_specs_give_the_papers_layers():
    names = arch.layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"] and len(names) == 16 * 2 + 5
    assert sum(s.kind == "conv" for s in arch.specs("vgg16")) == 13
    assert arch.layer_names("vgg16", keep_classifier=True)[-5:] == ["fc6", "relu6", "fc7", "relu7", "fc8"]
    assert [arch.kind(n) for n in ("conv4_2", "relu4_2", "pool4", "fc7", "relu7", "nope")] == [
        "conv", "relu", "pool", "fc", "relu", None]
    assert arch.block("relu4_2") == 4 and arch.block("fc6") == 6
    assert arch.channels("pool4") == 512 and arch.channels("fc8") == 1000 and arch.channels("relu1_1") == 64
    with pytest.raises(MiniVGGError, match="unknown architecture"):
        arch.specs("vgg11")


def test_the_net_and_the_converters_read_the_same_spec():
    from weights_tools import convert

    for a in ("vgg16", "vgg19"):
        assert vgg.conv_specs(a) == arch.conv_specs(a)
        assert [(n, cin, cout) for n, cout, cin in convert.conv_specs(a)] == arch.conv_specs(a)
        assert vgg.layer_names(a) == arch.layer_names(a)
    assert [(n, fin, fout) for n, fout, fin in convert.FC_SPECS] == list(vgg.FC)
    assert vgg.layer_block("relu3_1") == 3 and vgg.layer_channels("conv5_1") == 512
