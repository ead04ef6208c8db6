"""The review page in a real headless browser (Debian's chromium, driven by selenium): three
pairs labelled with clicks and keys land in the run's labels file and in the next iteration's
EFT data, and a response holding <script> shows as text (issue 19)."""

import json
import os
import shutil

import pytest

from srlm_jax import judges
from srlm_jax.pipeline import seeds as seeds_lib
from srlm_jax.review import labels as labels_lib
from srlm_jax.review import server as server_lib
from test_loop import tiny_config

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')
try:
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
except ImportError:
  webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or not CHROMIUM or not DRIVER,
    reason='needs selenium (pip install -e ".[review]") and Debian\'s chromium and '
           'chromium-driver (apt-get install -y chromium chromium-driver)')

HOSTILE = ('<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
           '<b>not bold</b>')


def pairs():
  """Three pairs of iteration 1, the first with markup in its chosen response."""
  return [{'id': f'p{k:05d}', 'prompt': f'Question {k} & <i>more</i>?',
           'chosen': HOSTILE if k == 0 else f'good answer {k}',
           'rejected': f'bad answer {k}', 'chosen_index': 0, 'rejected_index': 1,
           'chosen_score': 4.0, 'rejected_score': 2.0} for k in range(3)]


@pytest.fixture
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              '--no-proxy-server'):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER),
                            options=options)
  driver.set_page_load_timeout(30)
  yield driver
  driver.quit()


def test_label_three_pairs_with_clicks_and_keys(tmp_path, browser):
  workdir = str(tmp_path)
  judgments = [{'id': p['id'], 'candidate': c, 'judgments': [f'reason <u>{c}</u>\nScore: 4']}
               for p in pairs() for c in (0, 1)]
  items = labels_lib.build_sample(pairs(), judgments, {}, t=1, n=16)
  path = labels_lib.labels_path(workdir, 1)
  server = server_lib.ReviewServer(items, path).start()
  try:
    browser.get(server.url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready'))
    # Markup in model text is text: shown literally, never parsed, never run.
    side = 'a' if items[0]['a'] == HOSTILE else 'b'
    shown = browser.find_element(By.ID, side)
    assert shown.text == HOSTILE
    assert not shown.find_elements(By.CSS_SELECTOR, 'script, img, b')
    assert browser.execute_script('return window.pwned') is None
    assert browser.find_element(By.ID, 'prompt').text == 'Question 0 & <i>more</i>?'
    # The judge's reasons are there too, as text.
    browser.find_element(By.CSS_SELECTOR, '#side-a summary').click()
    assert browser.find_element(By.ID, 'a-reasons').text.startswith('reason <u>')

    def saved(n):
      wait.until(lambda d: d.find_element(By.ID, 'progress').text.startswith(f'{n} of 3'))

    browser.find_element(By.ID, 'reviewer').send_keys('ana')
    browser.find_element(By.ID, 'pick-a').click()  # pair 1: a click
    saved(1)
    body = browser.find_element(By.TAG_NAME, 'body')
    body.send_keys('b')  # pair 2: the b key
    saved(2)
    body.send_keys('t')  # pair 3: the t key (a tie)
    saved(3)
  finally:
    server.stop()
  labels = labels_lib.read_labels(path)
  assert [(l['pair_id'], l['choice'], l['reviewer']) for l in labels] == [
      (items[0]['pair_id'], 'a', 'ana'), (items[1]['pair_id'], 'b', 'ana'),
      (items[2]['pair_id'], 'tie', 'ana')]
  assert labels[0]['chosen'] == items[0]['a'] and labels[1]['chosen'] == items[1]['b']
  for label in labels:
    assert label['time'].endswith('+00:00')
  # Iteration 2's EFT data: the two decided labels, scored by the person's choice.
  seeds = {'ift': [], 'eft': [], 'seed_prompts': []}
  eft = seeds_lib.with_human_eft(seeds, tiny_config(), workdir, 2)['eft']
  judge = judges.get('additive')
  high, low = judge.eft_judgment(5), judge.eft_judgment(4)
  assert high.endswith('Score: 5') and low.endswith('Score: 4')
  assert eft == [(items[0]['prompt'], items[0]['a'], high), (items[0]['prompt'], items[0]['b'], low),
                 (items[1]['prompt'], items[1]['b'], high), (items[1]['prompt'], items[1]['a'], low)]
  assert json.loads(open(path).readline())['judge_choice'] == items[0]['judge_choice']
  assert os.path.basename(path) == 'iter_1.jsonl'
