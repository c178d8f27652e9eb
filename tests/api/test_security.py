"""Master key loading and sealing, API token hashing, token buckets."""

import base64

import pytest

from provmark.api.auth import digests_match, new_token, token_digest
from provmark.api.crypto import MASTER_KEY_ENV, MasterKey, MasterKeyError, load_master_key
from provmark.api.limits import RateLimiter, retry_after


def test_sealed_secrets_open_only_under_the_same_key_and_context():
    key = MasterKey(bytes(range(32)))
    sealed = key.seal(b"s" * 32, "k_1@t_1")
    assert key.open(sealed, "k_1@t_1") == b"s" * 32
    assert key.seal(b"s" * 32, "k_1@t_1") != sealed  # fresh nonce each time
    with pytest.raises(MasterKeyError, match="cannot decrypt the secret of k_2@t_1"):
        key.open(sealed, "k_2@t_1")
    with pytest.raises(MasterKeyError):
        MasterKey(bytes(32)).open(sealed, "k_1@t_1")
    with pytest.raises(MasterKeyError):
        key.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), "k_1@t_1")


def test_the_master_key_never_shows_in_repr():
    key = MasterKey(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(key) and repr(key).startswith("MasterKey(check_value=")


def test_the_master_key_loads_from_the_environment_or_a_file(monkeypatch, tmp_path):
    raw = bytes(range(32))
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(raw).decode())
    assert load_master_key().check_value == MasterKey(raw).check_value
    monkeypatch.setenv(MASTER_KEY_ENV, base64.urlsafe_b64encode(raw).decode())
    assert load_master_key().check_value == MasterKey(raw).check_value
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(bytes(32)).decode() + "\n")
    assert load_master_key(path).check_value == MasterKey(bytes(32)).check_value


@pytest.mark.parametrize("value,message", [
    (None, "no master key: set PROVMARK_MASTER_KEY or pass --master-key-file"),
    ("not base64!", "PROVMARK_MASTER_KEY is not base64"),
    (base64.b64encode(bytes(16)).decode(), "the master key must be 32 bytes, got 16"),
])
def test_a_missing_or_malformed_master_key_is_refused_clearly(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(MASTER_KEY_ENV, value)
    with pytest.raises(MasterKeyError, match=message):
        load_master_key()


def test_an_unreadable_master_key_file_is_refused(tmp_path):
    with pytest.raises(MasterKeyError, match="cannot read master key file"):
        load_master_key(tmp_path / "absent")


def test_tokens_are_random_and_compared_by_digest():
    a, b = new_token(), new_token()
    assert a != b and a.startswith("pmk_") and len(a) == 47
    assert len(token_digest(a)) == 64 and token_digest(a) != token_digest(b)
    assert digests_match(token_digest(a), token_digest(a)) and not digests_match(token_digest(a), token_digest(b))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per client
    clock.now = 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_rate_zero_turns_limiting_off_and_idle_buckets_are_dropped():
    assert all(RateLimiter(rate=0, burst=1).acquire("a") == 0.0 for _ in range(100))
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=1, clock=clock)
    for client in "abc":
        limiter.acquire(client)
    clock.now = 5.0
    limiter.acquire("d")
    assert set(limiter._buckets) == {"d"}
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"


def test_a_limiter_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="rate must be >= 0, burst >= 1 and processes >= 1"):
        RateLimiter(rate=-1, burst=1)
    with pytest.raises(ValueError, match="got rate 1, burst 1, processes 0"):
        RateLimiter(rate=1, burst=1, processes=0)


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_worker_processes_split_the_limit_so_a_client_never_gets_more_than_it_in_total(processes):
    # Each `serve --workers N` process holds its own limiter: the worst case for the limit is a client
    # whose requests reach every process, and it must still be admitted at most burst at once and rate
    # per second after that.
    clock = Clock()
    limiters = [RateLimiter(rate=12, burst=10, processes=processes, clock=clock) for _ in range(processes)]
    burst = sum(limiter.acquire("token:a") == 0.0 for limiter in limiters for _ in range(20))
    assert burst == 10 // processes * processes <= 10
    assert all(limiter.acquire("token:a") == pytest.approx(processes / 12) for limiter in limiters)
    admitted = 0
    for step in range(1, 501):  # 10 s, each process asked 50 times a second (over its share of 12/s)
        clock.now = step / 50
        admitted += sum(limiter.acquire("token:a") == 0.0 for limiter in limiters)
    assert admitted == pytest.approx(12 * 10, abs=processes)
    assert (limiters[0].rate, limiters[0].burst, limiters[0].processes) == (12, 10, processes)  # totals, for messages


def test_a_burst_below_the_process_count_still_admits_one_request_per_process():
    limiters = [RateLimiter(rate=1, burst=2, processes=3, clock=Clock()) for _ in range(3)]
    assert [limiter.acquire("token:a") for limiter in limiters] == [0.0, 0.0, 0.0]
    assert all(limiter.acquire("token:a") > 0 for limiter in limiters)
