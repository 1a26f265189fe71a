from pathlib import Path

from incept.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_tokens_come_from_a_comma_separated_variable_and_a_mounted_file(monkeypatch, tmp_path):
    secret = tmp_path / "tokens"
    secret.write_text("from-file\n\n  second-from-file  \n")
    monkeypatch.setenv("INCEPT_API_TOKENS", " a, b ,,c")
    monkeypatch.setenv("INCEPT_API_TOKENS_FILE", str(secret))
    settings = Settings(_env_file=None)
    assert settings.api_tokens == ["a", "b", "c"]
    assert settings.tokens() == ["a", "b", "c", "from-file", "second-from-file"]


def test_every_setting_is_described_and_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`INCEPT_{name.upper()}`" in readme, f"README does not list INCEPT_{name.upper()}"
