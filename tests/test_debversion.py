from kgenv.distro.debversion import compare, split


def test_orders_like_dpkg():
    assert compare("12.2.0-14", "12.2.0-14+deb12u1") < 0
    assert compare("1.0~rc1", "1.0") < 0
    assert compare("2:1.0", "1:9.9") > 0
    assert compare("6.1.192-3", "6.1.192-10") < 0
    assert compare("6.1.99-1", "6.1.192-1") < 0
    assert compare("1.0a", "1.0+") < 0
    assert compare("1.0", "1.0") == 0


def test_split():
    assert split("2:12.2.0-14+deb12u1") == (2, "12.2.0", "14+deb12u1")
    assert split("1.24") == (0, "1.24", "")
