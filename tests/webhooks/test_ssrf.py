"""The SSRF guard refuses non-public destinations (literal or resolved) unless allowlisted."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from egress.url_guard import UnresolvableWebhookUrl, UnsafeWebhookUrl, check_webhook_url


@dataclass
class GuardSettings:
    webhook_allowlist: list[str] = field(default_factory=list)
    webhook_allow_http: bool = False


def resolver_for(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("name not known")
        return table[host]
    return resolve


DNS = resolver_for({
    "rebind.test": ["93.184.216.34", "10.0.0.7"],  # one public, one private answer
    "metadata.test": ["169.254.169.254"],
    "v6local.test": ["::1"],
    "public.test": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
})


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook", "https://[::ffff:10.0.0.1]/hook",
    "https://0.0.0.0/", "https://192.168.1.1/", "https://172.16.0.1/", "https://100.64.0.1/",
    "https://224.0.0.1/", "https://[fe80::1]/", "https://[fc00::1]/", "https://[2002:7f00:1::]/",
    "https://[64:ff9b::a00:1]/", "https://240.0.0.1/",
    "https://rebind.test/x", "https://metadata.test/", "https://v6local.test/",
])
def test_non_public_destinations_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as err:
        check_webhook_url(url, GuardSettings(), DNS)
    assert err.value.code == "unsafe_webhook_url"


def test_localhost_is_refused_through_the_system_resolver() -> None:
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url("https://localhost:8443/hook", GuardSettings())


def test_integer_ip_spelling_is_resolved_and_refused() -> None:
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url("https://2130706433/hook", GuardSettings())  # 127.0.0.1 as one integer


def test_public_destination_passes_with_all_addresses() -> None:
    target = check_webhook_url("https://public.test:8443/a?b=1", GuardSettings(), DNS)
    assert target.host == "public.test" and target.port == 8443
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")


def test_allowlist_admits_and_http_needs_opt_in() -> None:
    open_settings = GuardSettings(["127.0.0.0/8", "::1/128"], webhook_allow_http=True)
    assert check_webhook_url("http://127.0.0.1:9/x", open_settings).addresses == ("127.0.0.1",)
    assert check_webhook_url("https://[::1]/x", open_settings).addresses == ("::1",)
    assert check_webhook_url("https://[::ffff:127.0.0.1]/x", open_settings)  # mapped form admitted too
    with pytest.raises(UnsafeWebhookUrl, match="https"):
        check_webhook_url("http://public.test/x", GuardSettings(), DNS)
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url("https://10.0.0.1/x", open_settings)  # not in the allowlist


@pytest.mark.parametrize("url", ["ftp://public.test/", "https:///nohost", "not a url", "", "https://a.test:99999/",
                                 "file:///etc/passwd", "https://public.test/\r\nx"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url(url, GuardSettings(), DNS)


def test_unresolvable_name_is_its_own_error() -> None:
    with pytest.raises(UnresolvableWebhookUrl):
        check_webhook_url("https://nowhere.test/", GuardSettings(), DNS)
