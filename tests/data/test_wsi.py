import numpy as np
import pytest

from medpipe.data.wsi import open_slide, read_region, read_thumbnail, resolve_level, slide_from_array


@pytest.fixture(scope="module")
def samples(datasets):
    return datasets / "wsi_samples"


@pytest.mark.parametrize(
    "name,backend,levels,shape0,mpp,loc",
    [
        ("CMU-1-Small-Region.svs", "openslide", 1, (2967, 2220), 0.499, (1400, 1000)),
        # tifffile: the thumbnail/label/macro pages are not counted as levels
        ("CMU-1-Small-Region.svs", "tifffile", 1, (2967, 2220), 0.499, (1400, 1000)),
        ("tcga-cr-7395-01a-01-ts1.svs", "openslide", 2, (3567, 4443), None, (1600, 2000)),
        ("tcga-cr-7395-01a-01-ts1.svs", "tifffile", 2, (3567, 4443), None, (1600, 2000)),  # JPEG 2000
        ("kidney-48-5.tif", "auto", 1, (901, 1493), None, (510, 290)),
        ("small_dicom_wsi.dcm", "auto", 1, (2638, 3236), None, (1200, 1200)),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_read_real_samples(samples, name, backend, levels, shape0, mpp, loc):
    with open_slide(samples / name, backend) as s:
        assert s.level_count == levels
        assert s.level_dimensions[0] == shape0
        assert (s.mpp is None) if mpp is None else s.mpp == pytest.approx((mpp, mpp))
        for lvl in range(s.level_count):
            r = read_region(s, loc, (64, 96), lvl)
            assert r.shape == (3, 64, 96) and r.dtype == np.uint8
            assert 20 < r.mean() < 230 and r.std() > 5  # tissue, not blank glass
        meta = s.metadata()
        assert meta["level_count"] == levels and meta["level_dimensions"][0] == list(shape0)


def test_backends_agree_at_level0(samples):
    path = samples / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path, "openslide") as a, open_slide(path, "tifffile") as b:
        assert a.level_dimensions == b.level_dimensions
        np.testing.assert_array_equal(read_region(a, (1000, 1200), (100, 130)), read_region(b, (1000, 1200), (100, 130)))
        # level 1: both address the same level-0 location (OpenSlide interpolates sub-pixel positions)
        d = np.abs(read_region(a, (1000, 1200), (64, 64), 1).astype(int) - read_region(b, (1000, 1200), (64, 64), 1))
        assert d.mean() < 8


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: JFIF marker vs 'RGB' photometric interpretation
def test_dicom_frames_stitched(samples):
    import pydicom

    with open_slide(samples / "small_dicom_wsi.dcm") as s:
        assert s.backend == "dicom"  # OpenSlide 4 rejects this file (no ImageType)
        region = read_region(s, (480, 990), (40, 30))  # straddles four 500x500 frames
        frames = pydicom.dcmread(samples / "small_dicom_wsi.dcm").pixel_array  # (42, 500, 500, 3)
    n_rows = 6  # the file's frames are column-major: frame = col * 6 + row
    expect = np.zeros((40, 30, 3), np.uint8)
    for y in range(480, 520):
        for x in (990, 1019):
            r, c = y // 500, x // 500
            expect[y - 480, x - 990] = frames[c * n_rows + r][y % 500, x % 500]
    np.testing.assert_array_equal(region[:, :, [0, 29]].transpose(1, 2, 0), expect[:, [0, 29]])


def test_png_and_array(datasets):
    mosaic = datasets / "idc_breast_histopathology/reconstructed_region/patient8863_mosaic.jpg"
    with open_slide(mosaic) as s:
        assert s.backend == "pil" and s.level_dimensions == ((2351, 2801),) and s.mpp is None
        r = read_region(s, (100, 200), (50, 60))
        whole = read_region(s, (0, 0), None)
    a = slide_from_array(whole, mpp=0.25)
    np.testing.assert_array_equal(read_region(a, (100, 200), (50, 60)), r)
    assert a.level_mpp(0) == (0.25, 0.25)


def test_border_padding(samples):
    with open_slide(samples / "kidney-48-5.tif") as s:
        r = read_region(s, (880, 1480), (40, 30), fill=7)
    assert r.shape == (3, 40, 30)
    assert (r[:, 21:, :] == 7).all() and (r[:, :, 13:] == 7).all() and (r[:, :21, :13] != 7).any()


def test_resolve_level(samples):
    with open_slide(samples / "CMU-1-Small-Region.svs") as s:
        assert resolve_level(s) == 0
        assert resolve_level(s, mpp=0.5) == 0  # 0.499 within tolerance
        assert resolve_level(s, mpp=2.0) == 0  # nearest level <= requested
        with pytest.raises(ValueError, match="finer than level 0"):
            resolve_level(s, mpp=0.25)
        with pytest.raises(ValueError, match="level 3 is out of range.*0..0"):
            resolve_level(s, level=3)
        with pytest.raises(ValueError, match="either level or mpp"):
            resolve_level(s, level=0, mpp=1.0)
    with open_slide(samples / "tcga-cr-7395-01a-01-ts1.svs", "tifffile") as s:
        assert resolve_level(s, level=1) == 1
        with pytest.raises(ValueError, match="no resolution metadata"):
            resolve_level(s, mpp=1.0)
    two = slide_from_array(np.zeros((3, 8, 8), np.uint8), mpp=0.5)
    two.level_dimensions, two.level_downsamples = ((8, 8), (4, 4)), (1.0, 2.0)
    assert resolve_level(two, mpp=0.9) == 0 and resolve_level(two, mpp=1.0) == 1 and resolve_level(two, mpp=5) == 1


def test_errors_name_the_problem(samples, tmp_path):
    missing = tmp_path / "nope.svs"
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        open_slide(missing)
    with pytest.raises(ValueError, match="unknown WSI backend 'bioformats'"):
        open_slide(samples / "kidney-48-5.tif", backend="bioformats")
    with open_slide(samples / "tcga-cr-7395-01a-01-ts1.svs") as s:
        with pytest.raises(ValueError, match=r"level 2 is out of range .*tcga-cr-7395-01a-01-ts1.svs.*0..1"):
            read_region(s, (0, 0), (8, 8), level=2)
        with pytest.raises(ValueError, match="outside"):
            read_region(s, (5000, 0), (8, 8))


def test_thumbnail_tiles_match_whole(samples):
    with open_slide(samples / "kidney-48-5.tif") as s:
        thumb, ds = read_thumbnail(s, max_size=200, tile=160)  # several tiles, partial border blocks
        full = read_region(s, (0, 0), None)
    f = 8  # ceil(1493 / 200)
    assert ds == f and thumb.shape == (3, 113, 187)
    expect = full[:, :896, :1488].reshape(3, 112, f, 186, f).mean(axis=(2, 4))
    np.testing.assert_allclose(thumb[:, :112, :186], np.round(expect), atol=1)


def test_large_plain_image_is_not_a_decompression_bomb(datasets, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands in for Pillow's 89 Mpx default
    mosaic = datasets / "idc_breast_histopathology/reconstructed_region/patient8863_mosaic.jpg"
    with open_slide(mosaic) as s:
        assert s.level_dimensions == ((2351, 2801),)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("resolution,unit,expect", [((20000, 20000), "CENTIMETER", 0.5), ((72, 72), "INCH", None)])
def test_tiff_resolution_tags(samples, tmp_path, resolution, unit, expect, backend):
    import tifffile

    with open_slide(samples / "kidney-48-5.tif") as k:
        crop = read_region(k, (400, 400), (256, 256)).transpose(1, 2, 0)  # real tissue
    path = tmp_path / "crop.tif"
    tifffile.imwrite(path, crop, tile=(128, 128), photometric="rgb", resolution=resolution, resolutionunit=unit)
    with open_slide(path, backend) as s:  # 72 dpi is a document default, not a microscope resolution
        assert (s.mpp == pytest.approx((expect, expect)) if expect else s.mpp is None)
        np.testing.assert_array_equal(read_region(s, (10, 20), (30, 40)), crop[10:40, 20:60].transpose(2, 0, 1))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: JFIF marker vs 'RGB' photometric interpretation
@pytest.mark.parametrize("fragments_per_frame", [1, 2])
def test_dicom_frames_split_into_fragments(samples, tmp_path, fragments_per_frame):
    """Frames of several fragments each are joined through the Basic Offset Table (pydicom.encaps)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    src = samples / "small_dicom_wsi.dcm"
    ds = pydicom.dcmread(src)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=True)
    path = tmp_path / "refragmented.dcm"
    ds.save_as(path)
    with open_slide(src, "dicom") as a, open_slide(path, "dicom") as b:
        assert [len(f) for f in b.backend_state["frames"]] == [fragments_per_frame] * len(frames)
        np.testing.assert_array_equal(read_region(a, (480, 990), (600, 700)), read_region(b, (480, 990), (600, 700)))
