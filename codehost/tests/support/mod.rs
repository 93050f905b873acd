//! Shared by the code host integration tests: the fake GitHub and a test-only App key.

pub mod fake_github;

/// A 2048-bit RSA key made for these tests only (`openssl genrsa -traditional 2048`): it signs
/// the App JWTs the fake verifies. It is not, and never was, any real App's key.
pub const TEST_APP_PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEA+y97Ud4q6cOtsdRudiXe0TV44/exvWkLdKFYT1WNQEGN3JbT
jjq1dXFGeLZUn1FH7Y5liHrBDB+ucIZgp9lpdKgLVgWnH0FSZYnzLFJuz0277NYf
y7sPUtYUZm5BSK/yiwy3tSz4xh2x3dfM9ueKYl8+C/6dRCCQk+hi1dAg3EtJ2e0Y
2+rY+lVmtC6NGOrmS8knQdG5ZA18vhd0kU9vVNjcs9xFkYtmY78929/xNQjCca7R
0j45xNV81jXlq7IKUOsNtFUY8/4P3wcGgMVnBGEyTfPvokI5s+GW/O6v2fCqijlj
aOl0aGtQ1o0PwJSGKspl3SLiwY9YQ/FcTS+nvwIDAQABAoIBAAd6R2KNiZuB7sbP
eyZbREHYJKwssIbh/KxRLU7XTigui2mYt92RE9vWLnHjg6tmgQyqY41nkh2pR8kj
xvbYOxJ0+jlqW6pLiIdrTujv30qelsybJ0EqZW9i3iKaf6kJS+Al1cY3+4PyWFwx
U3G6PN1m1nMG9mmTypoMnfydgIzuRcBjm62xYNZzBf+ZwNzKob5LPTKK7luakwi/
wTlh7ItAoacUZN5YeUY0dXB01LC5+k3VydxwEiM+UTihpkX7OHp+TJQjAVGz9x06
AoQ/KAvMkC+S9P/bgpSDWVwzekxia1e2T+0gwUxh30XqAZONkUBkvl7Qe0WADSPz
6ZnfhvECgYEA/p2Y5uATbJZrcrvZy9ManXc+nMqpjTjiAUh4T1E9DbsFoDA5y0bj
yp78RT7bquFH5rS4LKN+nJzo2primFb8vFOTgt4WKEUyMWjD0h6s5PYELpddTpsg
fW9wxzst0iVvWdYw8oMuRvvD6NdUZ6NaWSrC5YIqA4zmuyglMDakzZkCgYEA/I0c
KF2Wy85Y5uXcw5AlxC6Oi0gIsazRpcylDb6ssw/lOapWP6w7zMD9zVLYTGvPKCEz
CzztudnKuCa93GdGoVk4somryeGrnTkZpKtbQgd10OpErP4kbvqTeAh/2WSh5G8P
Li66dyYrUoF7HkPqr27GcykhRlfIJwPHPp4SBxcCgYEAoOth06kTHbIDvsPS5utJ
CvRuchH0DvlAfacbwqWJfMAS0icon7zyAwFwVyNfGiS/mKPnMu8x+jGBSYhSZg20
NiJsPG24e0MgcfHQsWAJzbte8UNhCWkpo51nHcPdNc/LDHA/B0a5XMuKCgLtqYKo
e2p3Oy6E9zF6MhcxScN/bSECgYArjZI7i9hDkXRXbXCi8SryKC1A681EBs+ozh/w
vN8/ihA33548ING3P9kFHbJbi4QQIZmR6JH+qQaCt3uqlMzjamWStJdBm39i/8Pi
WALG4k55Fs19H97cnK3t11lk/ivFHzn49uoFPjneYqH+2CuS0YG7vm4UmXLU95vW
up/VRQKBgQCoN85JPzutJ+AGKOC2IoHLZT2aEip30K4qoEJWijqZ1F6xzValKc7E
CV1Sni2wW8zRzcigWAgKap8sWu9zx5QocxX/QckFAQD+5KjkT2MPO7QynL946BP1
iUKBlzKyIGIgcYZlOkFEgZDqzkKrCX3HAkzgaZql378CjijKhsg41w==
-----END RSA PRIVATE KEY-----
";

/// The public half of [`TEST_APP_PRIVATE_KEY`] (`openssl rsa -pubout`).
pub const TEST_APP_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA+y97Ud4q6cOtsdRudiXe
0TV44/exvWkLdKFYT1WNQEGN3JbTjjq1dXFGeLZUn1FH7Y5liHrBDB+ucIZgp9lp
dKgLVgWnH0FSZYnzLFJuz0277NYfy7sPUtYUZm5BSK/yiwy3tSz4xh2x3dfM9ueK
Yl8+C/6dRCCQk+hi1dAg3EtJ2e0Y2+rY+lVmtC6NGOrmS8knQdG5ZA18vhd0kU9v
VNjcs9xFkYtmY78929/xNQjCca7R0j45xNV81jXlq7IKUOsNtFUY8/4P3wcGgMVn
BGEyTfPvokI5s+GW/O6v2fCqijljaOl0aGtQ1o0PwJSGKspl3SLiwY9YQ/FcTS+n
vwIDAQAB
-----END PUBLIC KEY-----
";
