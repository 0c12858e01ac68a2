from storage.records import NewJob


def test_fixtures_work(job_store, object_store, owner_id):
    rec = job_store.create(NewJob(owner_id, "generate", {"width": 64, "height": 64}, "c", "q"))
    assert job_store.get(rec.id).status == "queued"
    object_store.put("inputs/x/image.png", b"abc", "image/png")
    assert object_store.get("inputs/x/image.png") == b"abc"
