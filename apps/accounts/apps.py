from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        # Signal receivers: log-ins, failed log-ins, log-outs, lockouts and token revocation
        # on a password change are audited.
        from apps.accounts import audit, lockout, tokens  # noqa: F401
