import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("webui", "0007_organizing"),
    ]

    operations = [
        migrations.AddField(
            model_name="sharedconversation",
            name="group",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="auth.group"
            ),
        ),
    ]
