from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webui', '0004_message_dropped_messages'),
    ]

    operations = [
        migrations.AddField(
            model_name='upload',
            name='files',
            field=models.JSONField(blank=True, default=list),
        ),
    ]
