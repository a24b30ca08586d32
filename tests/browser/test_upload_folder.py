"""A Hugging Face folder uploaded in Chromium as separate files: one progress bar for the whole folder, a pause
and a reload resume where the bytes stopped, and the folder picker leaves out hidden files and subfolders."""

from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in

pytestmark = pytest.mark.browser


def record_chunks(page) -> list[tuple[str, int]]:
    chunks: list[tuple[str, int]] = []

    def on_request(request):
        query = parse_qs(urlparse(request.url).query)
        if request.method == "PUT" and "offset" in query:
            chunks.append((query.get("file", [""])[0], int(query["offset"][0])))

    page.on("request", on_request)
    return chunks


def test_an_admin_uploads_a_folder_as_files_with_progress_and_resumes_after_a_reload(page, embedded_server,
                                                                                      tiny_hf):
    files = sorted(p for p in tiny_hf.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    chunks = record_chunks(page)
    page.evaluate("window.hearthUpload.chunkSize = 64 * 1024; window.hearthUpload.stopAfter = 3")
    page.set_input_files("#upload-file", [str(p) for p in files])  # picked together
    page.fill("#upload-name", "hf-browser")
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Paused at", timeout=30_000)
    assert chunks == [("config.json", 0), ("model.safetensors", 0), ("model.safetensors", 65536)]
    bar = page.locator("#upload-progress")
    assert float(bar.get_attribute("max")) == total  # one bar for the whole folder
    assert float(bar.get_attribute("value")) == (tiny_hf / "config.json").stat().st_size + 2 * 65536

    page.reload()  # the page is gone; the upload is not
    expect(page.locator("#unfinished-uploads")).to_contain_text(f"({len(files)} files) as hf-browser")
    first_session = list(chunks)
    chunks.clear()
    page.evaluate("window.hearthUpload.chunkSize = 64 * 1024")
    page.set_input_files("#upload-file", [str(p) for p in files])
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Added hf-browser to the library", timeout=60_000)
    assert chunks[0] == ("model.safetensors", 2 * 65536)  # resumed where it stopped
    assert len(set(first_session + chunks)) == len(first_session + chunks)  # nothing sent twice
    assert float(bar.get_attribute("value")) == float(bar.get_attribute("max")) == total
    page.get_by_role("link", name="hf-browser").click()
    expect(page.locator("body")).to_contain_text("llama")


def test_the_folder_picker_sends_the_flat_files_and_leaves_out_the_rest(page, embedded_server, tiny_hf,
                                                                        tmp_path):
    folder = tmp_path / "picked-hf"
    shutil.copytree(tiny_hf, folder)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"\x80\x04 not really")
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    chunks = record_chunks(page)
    page.set_input_files("#upload-folder", str(folder))
    page.click("#upload-start")  # no name typed: the folder's name
    status = page.locator("#upload-status")
    expect(status).to_contain_text("Added picked-hf to the library", timeout=60_000)
    expect(status).to_contain_text("Left out: ")
    expect(status).to_contain_text(".gitattributes")
    expect(status).to_contain_text("original/consolidated.00.pth")
    assert {name for name, _ in chunks} == {p.name for p in tiny_hf.iterdir()}
    page.reload()
    expect(page.locator('tr[data-model="picked-hf"] .load-state')).to_contain_text("not loaded")


def test_a_refused_folder_says_why(page, embedded_server, tiny_hf, tmp_path):
    folder = tmp_path / "pickled-hf"
    folder.mkdir()
    for p in tiny_hf.iterdir():
        if p.name != "model.safetensors":
            shutil.copy(p, folder / p.name)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 pickled")
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    page.set_input_files("#upload-folder", str(folder))
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Upload refused: pytorch_model.bin is a pickled PyTorch file")
    expect(page.locator("#upload-status")).to_have_class("status error")
