"""API tokens moved from DRF's ``authtoken`` (keys stored in plain text) to django-rest-knox
(digests only). The old app is no longer installed, so nothing would ever read or delete
its table: drop it, and the plain-text keys in it, where an older database has one.
Clients obtain a new token (docs/api.md, "Tokens")."""

from django.db import migrations


def drop_authtoken_table(apps, schema_editor):
    connection = schema_editor.connection
    if "authtoken_token" in connection.introspection.table_names():
        schema_editor.execute(f"DROP TABLE {schema_editor.quote_name('authtoken_token')}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_sync_role_permissions")]

    operations = [migrations.RunPython(drop_authtoken_table, migrations.RunPython.noop)]
