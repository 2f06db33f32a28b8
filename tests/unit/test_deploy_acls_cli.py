"""`lasp-streams deploy --acls`: the plan and the role ACLs, with no broker under --dry-run."""

from __future__ import annotations

from click.testing import CliRunner

from lasp_streams.cli import main


def test_deploy_dry_run_prints_each_roles_acls_and_creates_nothing() -> None:
    result = CliRunner().invoke(
        main,
        ["deploy", "topologies.ad_counter", "--dry-run", "--acls", "--bootstrap", "127.0.0.1:1"],
    )
    assert result.exit_code == 0, result.output
    for role in ("device", "worker", "sink", "auditor", "admin"):
        assert f"# {role} (User:lasp-{role})" in result.output
    # The device role writes client deltas but never the topics that move money.
    device = result.output.split("# device", 1)[1].split("\n# ", 1)[0]
    assert "WRITE on TOPIC ad_counter.impressions.deltas" in device
    assert "crossings" not in device and "billing" not in device
    assert "dry run: nothing created" in result.output
