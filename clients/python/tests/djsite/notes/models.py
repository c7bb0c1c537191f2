from django.db import models


class Note(models.Model):
    """The tenant-enabled table `notes`; tenant_id is the database's business."""

    body = models.TextField()

    class Meta:
        managed = False
        db_table = "notes"
